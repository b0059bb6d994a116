//! `labctl bump`'s decisions about a new version's bytes, once they are downloaded: whether
//! every source of truth the vendor offers agrees with them, which digests go into the manifest,
//! and how far those digests are to be trusted. Pure: the download and the vendor's facts are
//! gathered elsewhere (see docs/sources.md for the trust table this follows).

use crate::checksum::{Algorithm, Checksum};
use crate::upstream::track::file_name;

/// How the manifest writes an image's source checksum now: the form a bump keeps. (From the
/// manifest's `SourceChecksum`; the manifest imports this module, not the other way round.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrittenAs {
    /// A digest in this algorithm.
    Digest(Algorithm),
    /// The URL of the vendor's checksum list: no digest is written.
    List,
    /// Pinned on first use: a sha256 is written.
    Pin,
}

/// Where a digest written into the manifest came from: how far to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The download verified against the manifest's minisign key.
    Signature { key_id: String },
    /// The vendor's checksum list (and its `version.yaml`, for Harvester's ISO) listed it.
    VendorList { url: String },
    /// The vendor publishes nothing to check against: pinned on first use.
    FirstUse,
}

impl Trust {
    /// A signature outranks the vendor's list, which outranks nothing at all.
    pub fn earned(key_id: Option<&str>, facts: &Facts) -> Trust {
        match (key_id, &facts.listed) {
            (Some(key_id), _) => Trust::Signature {
                key_id: key_id.to_string(),
            },
            (None, Some((list, _, _))) => Trust::VendorList { url: list.clone() },
            (None, None) => Trust::FirstUse,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Trust::Signature { key_id } => {
                format!("signature-verified (minisign key `{key_id}`)")
            }
            Trust::VendorList { url } => format!("listed by the vendor ({url})"),
            Trust::FirstUse => {
                "pinned on first use: the vendor publishes no checksum or signature".into()
            }
        }
    }
}

/// What the vendor says about the new version's file, gathered before the download.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// `(list URL, file name, digest)` from the vendor's checksum list.
    pub listed: Option<(String, String, Checksum)>,
    /// Harvester's `version.yaml` digest of the ISO, when this image is that ISO.
    pub version_yaml: Option<(String, Checksum)>,
    /// GitHub's asset digest and size.
    pub github: Option<(String, Option<Checksum>, u64)>,
    /// `Content-Length` of a HEAD (the Talos factory).
    pub head_length: Option<u64>,
    pub notes: Option<String>,
    pub release_url: Option<String>,
}

/// What the download of the new version hashed to.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub sha256: Checksum,
    /// The download's digest in the other algorithm asked for (sha512), when one was.
    pub source: Option<Checksum>,
    pub size: u64,
    /// The decompressed output's digest in the algorithm the manifest declares, when the
    /// image is decompressed.
    pub output: Option<Checksum>,
    pub content_type: Option<String>,
    /// `None` without a signature to check.
    pub signature_ok: Option<bool>,
}

impl Downloaded {
    /// The download's digest in `algorithm`, when it was computed.
    fn digest(&self, algorithm: Algorithm) -> Option<Checksum> {
        match algorithm {
            Algorithm::Sha256 => Some(self.sha256.clone()),
            Algorithm::Sha512 => self.source.clone().filter(|s| s.algorithm == algorithm),
        }
    }
}

/// Which check refused which bytes. Made once per image and reported: its size does not matter
/// (hence `result_large_err` allowed where it is returned).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Facts(String),
    #[error("{url} answered 200 with an HTML page (Content-Type: {content_type}), not the file: a vendor's error page")]
    Html { url: String, content_type: String },
    #[error("the minisign signature refused the bytes of {url}: {detail}")]
    Signature { url: String, detail: String },
    #[error(
        "the vendor's list {list} says {file} is {listed}, but the download from {url} is {got}"
    )]
    VendorList {
        list: String,
        file: String,
        url: String,
        listed: Checksum,
        got: Checksum,
    },
    #[error(
        "GitHub's digest of the asset {asset} is {listed}, but the download from {url} is {got}"
    )]
    GithubDigest {
        asset: String,
        url: String,
        listed: Checksum,
        got: Checksum,
    },
    #[error("{what} says {expected} bytes, but {got} bytes were downloaded from {url}")]
    Size {
        what: String,
        url: String,
        expected: u64,
        got: u64,
    },
}

/// The algorithm to hash the download in beside sha256: sha512 when the vendor's list, the
/// manifest's current digest, or (for a raw download) its expected digest is one.
pub fn source_algorithm(
    facts: &Facts,
    written: WrittenAs,
    decompressed: bool,
    expected: Option<&Checksum>,
) -> Algorithm {
    let sha512 = |a: Option<Algorithm>| a == Some(Algorithm::Sha512);
    let written = match written {
        WrittenAs::Digest(a) => Some(a),
        WrittenAs::List | WrittenAs::Pin => None,
    };
    if sha512(facts.listed.as_ref().map(|(_, _, c)| c.algorithm))
        || sha512(written)
        || (!decompressed && sha512(expected.map(|e| e.algorithm)))
    {
        Algorithm::Sha512
    } else {
        Algorithm::Sha256
    }
}

/// The checks, in order of authority: HTML, the signature, the vendor's list (and
/// `version.yaml`), GitHub's digest, sizes. Returns the cross-checks that agreed. Long on
/// purpose: one block per source of truth, each refusing with its own error, read top to
/// bottom like the trust table in docs/sources.md.
#[allow(clippy::result_large_err)]
pub fn judge(
    url: &str,
    facts: &Facts,
    got: &Downloaded,
    key_id: Option<&str>,
) -> Result<Vec<String>, Refusal> {
    let mut agreed = Vec::new();
    if let Some(ct) = &got.content_type {
        let html = ct.to_ascii_lowercase().starts_with("text/html");
        if html && !file_name(url).ends_with(".html") {
            return Err(Refusal::Html {
                url: url.to_string(),
                content_type: ct.clone(),
            });
        }
    }
    if got.signature_ok == Some(false) {
        return Err(Refusal::Signature {
            url: url.to_string(),
            detail: format!(
                "it does not verify with key {}",
                key_id.unwrap_or("(unknown)")
            ),
        });
    }
    if let Some((list, file, listed)) = &facts.listed {
        let actual = got.digest(listed.algorithm).ok_or_else(|| {
            Refusal::Facts(format!(
                "the {} digest was not computed",
                listed.algorithm.name()
            ))
        })?;
        if actual != *listed {
            return Err(Refusal::VendorList {
                list: list.clone(),
                file: file.clone(),
                url: url.to_string(),
                listed: listed.clone(),
                got: actual,
            });
        }
    }
    if let Some((doc, listed)) = &facts.version_yaml {
        let actual = got
            .digest(listed.algorithm)
            .unwrap_or_else(|| got.sha256.clone());
        if actual != *listed {
            return Err(Refusal::VendorList {
                list: doc.clone(),
                file: file_name(url).to_string(),
                url: url.to_string(),
                listed: listed.clone(),
                got: actual,
            });
        }
        agreed.push(format!("matches `spec.isoChecksum` in {doc}"));
    }
    if let Some((asset, digest, size)) = &facts.github {
        if let Some(listed) = digest {
            let actual = got
                .digest(listed.algorithm)
                .unwrap_or_else(|| got.sha256.clone());
            if actual != *listed {
                return Err(Refusal::GithubDigest {
                    asset: asset.clone(),
                    url: url.to_string(),
                    listed: listed.clone(),
                    got: actual,
                });
            }
            agreed.push("matches GitHub's asset digest (integrity only)".into());
        }
        if *size != got.size {
            return Err(Refusal::Size {
                what: format!("GitHub's asset {asset}"),
                url: url.to_string(),
                expected: *size,
                got: got.size,
            });
        }
    }
    if let Some(length) = facts.head_length {
        if length != got.size {
            return Err(Refusal::Size {
                what: "the factory's Content-Length".into(),
                url: url.to_string(),
                expected: length,
                got: got.size,
            });
        }
        agreed.push(format!(
            "size matches the factory's Content-Length ({length} bytes)"
        ));
    }
    Ok(agreed)
}

/// The digests written into the manifest: the source checksum in the form the manifest already
/// uses (a digest in its algorithm, none when it names a checksum list, sha256 when it pins on
/// first use), and the expected output digest (the decompressed output's, or the download's in
/// the algorithm `expected` declares).
#[allow(clippy::result_large_err)]
pub fn digests_to_pin(
    written: WrittenAs,
    expected: Option<&Checksum>,
    got: &Downloaded,
) -> Result<(Option<Checksum>, Option<Checksum>), Refusal> {
    let checksum = match written {
        WrittenAs::Digest(algorithm) => Some(got.digest(algorithm).ok_or_else(|| {
            Refusal::Facts(format!(
                "a {} digest of a compressed download is not computed",
                algorithm.name()
            ))
        })?),
        WrittenAs::List => None,
        WrittenAs::Pin => Some(got.sha256.clone()),
    };
    let expected = match (&got.output, expected) {
        (Some(out), _) => Some(out.clone()),
        (None, Some(e)) => got.digest(e.algorithm),
        (None, None) => None,
    };
    Ok((checksum, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://vendor.example/v2/disk.raw";

    fn sha256(text: &str) -> Checksum {
        Checksum::sha256(text.as_bytes())
    }

    fn downloaded(body: &str) -> Downloaded {
        Downloaded {
            sha256: sha256(body),
            source: None,
            size: body.len() as u64,
            output: None,
            content_type: Some("application/octet-stream".into()),
            signature_ok: None,
        }
    }

    fn listed(body: &str) -> Facts {
        Facts {
            listed: Some((
                "https://vendor.example/v2/SHA256SUMS".into(),
                "disk.raw".into(),
                sha256(body),
            )),
            ..Facts::default()
        }
    }

    #[test]
    fn bytes_every_source_agrees_with_pass_with_what_agreed() {
        let mut facts = listed("disk");
        facts.github = Some(("disk.raw".into(), Some(sha256("disk")), 4));
        facts.head_length = Some(4);
        let agreed = judge(URL, &facts, &downloaded("disk"), None).unwrap();
        assert_eq!(
            agreed,
            vec![
                "matches GitHub's asset digest (integrity only)".to_string(),
                "size matches the factory's Content-Length (4 bytes)".to_string(),
            ]
        );
    }

    #[test]
    fn an_html_page_is_refused_before_anything_else() {
        let mut got = downloaded("<html>");
        got.content_type = Some("Text/HTML; charset=utf-8".into());
        got.signature_ok = Some(false);
        assert!(matches!(
            judge(URL, &listed("disk"), &got, None),
            Err(Refusal::Html { .. })
        ));
        // Unless an HTML file is what the URL names.
        let page = "https://vendor.example/notes.html";
        assert!(judge(page, &Facts::default(), &downloaded("x"), None).is_ok());
    }

    #[test]
    fn a_signature_that_does_not_verify_is_refused_with_its_key() {
        let mut got = downloaded("disk");
        got.signature_ok = Some(false);
        let Err(Refusal::Signature { detail, .. }) = judge(URL, &listed("disk"), &got, Some("K1"))
        else {
            panic!("refused by the signature")
        };
        assert!(detail.contains("K1"), "{detail}");
    }

    #[test]
    fn each_source_of_truth_refuses_other_bytes() {
        let got = downloaded("tampered");
        assert!(matches!(
            judge(URL, &listed("disk"), &got, None),
            Err(Refusal::VendorList { .. })
        ));
        let yaml = Facts {
            version_yaml: Some(("version.yaml".into(), sha256("disk"))),
            ..Facts::default()
        };
        let Err(Refusal::VendorList { file, .. }) = judge(URL, &yaml, &got, None) else {
            panic!("refused by version.yaml")
        };
        assert_eq!(file, "disk.raw");
        let github = Facts {
            github: Some(("disk.raw".into(), Some(sha256("disk")), 8)),
            ..Facts::default()
        };
        assert!(matches!(
            judge(URL, &github, &got, None),
            Err(Refusal::GithubDigest { .. })
        ));
        let sized = Facts {
            github: Some(("disk.raw".into(), None, 9)),
            ..Facts::default()
        };
        assert!(matches!(
            judge(URL, &sized, &got, None),
            Err(Refusal::Size {
                expected: 9,
                got: 8,
                ..
            })
        ));
        let factory = Facts {
            head_length: Some(7),
            ..Facts::default()
        };
        assert!(matches!(
            judge(URL, &factory, &got, None),
            Err(Refusal::Size { expected: 7, .. })
        ));
    }

    #[test]
    fn a_sha512_list_needs_the_sha512_of_the_download() {
        let sha512 = Checksum::of_bytes(Algorithm::Sha512, b"disk");
        let facts = Facts {
            listed: Some(("SHA512SUMS".into(), "disk.raw".into(), sha512.clone())),
            ..Facts::default()
        };
        assert!(matches!(
            judge(URL, &facts, &downloaded("disk"), None),
            Err(Refusal::Facts(_))
        ));
        let mut got = downloaded("disk");
        got.source = Some(sha512);
        assert!(judge(URL, &facts, &got, None).is_ok());
        assert_eq!(
            source_algorithm(&facts, WrittenAs::Pin, false, None),
            Algorithm::Sha512
        );
        assert_eq!(
            source_algorithm(&Facts::default(), WrittenAs::Pin, false, None),
            Algorithm::Sha256
        );
        // A decompressed image's expected digest is of the output, not of the download.
        let expected = Checksum::of_bytes(Algorithm::Sha512, b"out");
        assert_eq!(
            source_algorithm(&Facts::default(), WrittenAs::Pin, true, Some(&expected)),
            Algorithm::Sha256
        );
        assert_eq!(
            source_algorithm(&Facts::default(), WrittenAs::Pin, false, Some(&expected)),
            Algorithm::Sha512
        );
    }

    #[test]
    fn the_digests_written_keep_the_form_the_manifest_uses() {
        let got = downloaded("disk");
        let digest = WrittenAs::Digest(Algorithm::Sha256);
        assert_eq!(
            digests_to_pin(digest, None, &got).unwrap(),
            (Some(sha256("disk")), None)
        );
        assert_eq!(
            digests_to_pin(WrittenAs::Pin, None, &got).unwrap(),
            (Some(sha256("disk")), None)
        );
        let sha512 = WrittenAs::Digest(Algorithm::Sha512);
        assert!(digests_to_pin(sha512, None, &got).is_err());
        assert_eq!(
            digests_to_pin(WrittenAs::List, None, &got).unwrap(),
            (None, None)
        );
        let mut decompressed = got.clone();
        decompressed.output = Some(sha256("output"));
        assert_eq!(
            digests_to_pin(WrittenAs::Pin, Some(&sha256("older output")), &decompressed)
                .unwrap()
                .1,
            Some(sha256("output"))
        );
    }

    #[test]
    fn trust_follows_the_strongest_check() {
        assert_eq!(
            Trust::earned(Some("K1"), &listed("disk")),
            Trust::Signature {
                key_id: "K1".into()
            }
        );
        assert!(matches!(
            Trust::earned(None, &listed("disk")),
            Trust::VendorList { .. }
        ));
        assert_eq!(Trust::earned(None, &Facts::default()), Trust::FirstUse);
        assert!(Trust::FirstUse.describe().contains("first use"));
    }
}
