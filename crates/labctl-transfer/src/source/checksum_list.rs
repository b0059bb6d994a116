//! Checksum lists as vendors publish them — GNU `sha256sum` output (`hex  name`, `hex *name`),
//! BSD tags (`SHA256 (name) = hex`), optionally inside an OpenPGP clearsigned wrapper — and
//! finding one file's digest in them.

use labctl_core::checksum::{Algorithm, Checksum};

/// Lists are small; a larger answer is not a checksum list.
pub const MAX_LIST_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("`{file}` is not listed in {url}")]
    NotListed { url: String, file: String },
    #[error("{url} lists `{file}` more than once with different digests")]
    Conflicting { url: String, file: String },
    #[error("{url} has a malformed entry for `{file}`: {why}")]
    Malformed {
        url: String,
        file: String,
        why: String,
    },
}

/// One entry of a list: the name as written, and the digest text with its algorithm (if tagged).
struct Entry<'a> {
    name: &'a str,
    hex: &'a str,
    tag: Option<Algorithm>,
}

/// The signed text of a clearsigned message (RFC 4880 §7), or the whole text.
pub fn strip_clearsign(text: &str) -> std::borrow::Cow<'_, str> {
    if !text
        .trim_start()
        .starts_with("-----BEGIN PGP SIGNED MESSAGE-----")
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::new();
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PGP SIGNED MESSAGE-----"))
        .skip(1);
    // Armor headers (`Hash: SHA256`) end at the first empty line.
    for line in lines.by_ref() {
        if line.trim().is_empty() {
            break;
        }
    }
    for line in lines {
        if line.starts_with("-----BEGIN PGP SIGNATURE-----") {
            break;
        }
        // Dash-escaped lines.
        out.push_str(line.strip_prefix("- ").unwrap_or(line));
        out.push('\n');
    }
    std::borrow::Cow::Owned(out)
}

fn entries(text: &str) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        for (prefix, algorithm) in [
            ("SHA256 (", Algorithm::Sha256),
            ("SHA512 (", Algorithm::Sha512),
        ] {
            if let Some(rest) = line.strip_prefix(prefix) {
                if let Some((name, hex)) = rest.rsplit_once(") = ") {
                    out.push(Entry {
                        name,
                        hex: hex.trim(),
                        tag: Some(algorithm),
                    });
                }
            }
        }
        if line.starts_with("SHA256 (") || line.starts_with("SHA512 (") {
            continue;
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        if let (Some(hex), Some(name)) = (parts.next(), parts.next()) {
            if hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                let name = name.trim_start();
                out.push(Entry {
                    name: name.strip_prefix('*').unwrap_or(name),
                    hex,
                    tag: None,
                });
            }
        }
    }
    out
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parse(entry: &Entry, url: &str, file: &str) -> Result<Checksum, ListError> {
    let malformed = |why: String| ListError::Malformed {
        url: url.into(),
        file: file.into(),
        why,
    };
    let algorithm = match (entry.tag, entry.hex.len()) {
        (Some(tag), _) => tag,
        (None, 64) => Algorithm::Sha256,
        (None, 128) => Algorithm::Sha512,
        (None, n) => {
            return Err(malformed(format!(
                "a digest of {n} hex digits is neither sha256 nor sha512"
            )))
        }
    };
    Checksum::new(algorithm, entry.hex).map_err(|e| malformed(e.to_string()))
}

/// The digest of `file` in the list at `url` (the URL is only used in messages).
///
/// An exact name match wins; otherwise an entry whose basename is `file` (`./file`,
/// `dir/file`), when exactly one such name exists. A list holding a single bare digest (a
/// `.sha256` file with only the hex) applies to any file.
pub fn find(text: &str, url: &str, file: &str) -> Result<Checksum, ListError> {
    let text = strip_clearsign(text);
    let all = entries(&text);
    let mut matches: Vec<&Entry> = all.iter().filter(|e| e.name == file).collect();
    if matches.is_empty() {
        let by_base: Vec<&Entry> = all.iter().filter(|e| basename(e.name) == file).collect();
        let names: std::collections::BTreeSet<&str> = by_base.iter().map(|e| e.name).collect();
        if names.len() == 1 {
            matches = by_base;
        } else if names.len() > 1 {
            return Err(ListError::Conflicting {
                url: url.into(),
                file: file.into(),
            });
        }
    }
    if matches.is_empty() {
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        if let [only] = lines.as_slice() {
            if !only.contains(char::is_whitespace) {
                return parse(
                    &Entry {
                        name: file,
                        hex: only,
                        tag: None,
                    },
                    url,
                    file,
                );
            }
        }
        return Err(ListError::NotListed {
            url: url.into(),
            file: file.into(),
        });
    }
    let first = parse(matches[0], url, file)?;
    for other in &matches[1..] {
        if parse(other, url, file)? != first {
            return Err(ListError::Conflicting {
                url: url.into(),
                file: file.into(),
            });
        }
    }
    Ok(first)
}

/// An OpenPGP signature that must vouch for a checksum list.
pub struct PgpCheck {
    pub key: labctl_core::signature::PgpKey,
    /// A detached signature; `None` when the list is clearsigned.
    pub signature_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot fetch {0}")]
    Fetch(String, #[source] crate::source::http::DownloadError),
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Signature(#[from] labctl_core::signature::SignatureError),
}

/// Fetches the list at `list_url`, verifies its signature when one is configured, and looks up
/// the file `source_url` points at.
pub async fn resolve(
    client: &reqwest::Client,
    list_url: &str,
    source_url: &str,
    pgp: Option<&PgpCheck>,
    policy: &crate::source::http::RetryPolicy,
) -> Result<Checksum, ResolveError> {
    let text = fetch_verified(client, list_url, pgp, policy).await?;
    Ok(find(&text, list_url, file_name_of(source_url))?)
}

/// Fetches the list at `list_url` and returns its (signature-verified) text.
pub async fn fetch_verified(
    client: &reqwest::Client,
    list_url: &str,
    pgp: Option<&PgpCheck>,
    policy: &crate::source::http::RetryPolicy,
) -> Result<String, ResolveError> {
    let fetch = |url: String| async move {
        crate::source::http::fetch_bytes(client, &url, policy, MAX_LIST_BYTES)
            .await
            .map_err(|e| ResolveError::Fetch(url, e))
    };
    let bytes = fetch(list_url.to_string()).await?;
    let text = match pgp {
        None => String::from_utf8_lossy(&bytes).into_owned(),
        Some(PgpCheck {
            key,
            signature_url: Some(sig_url),
        }) => {
            let signature = fetch(sig_url.clone()).await?;
            labctl_core::signature::verify_detached(key, &bytes, &signature, sig_url)?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Some(PgpCheck {
            key,
            signature_url: None,
        }) => labctl_core::signature::verify_clearsigned(
            key,
            &String::from_utf8_lossy(&bytes),
            list_url,
        )?,
    };
    Ok(text)
}

/// The file name a URL points at, for looking it up in a list.
pub fn file_name_of(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://v/SUMS";

    #[test]
    fn gnu_entries_with_and_without_binary_marker() {
        let a = Checksum::sha256(b"a");
        let list = format!(
            "{}  other.iso\n{} *talos.raw.xz\n",
            Checksum::sha256(b"x").hex(),
            a.hex()
        );
        assert_eq!(find(&list, URL, "talos.raw.xz").unwrap(), a);
    }

    #[test]
    fn bsd_tags_give_the_algorithm() {
        let b = Checksum::of_bytes(Algorithm::Sha512, b"b");
        let bsd = format!("SHA512 (Fedora-Server-41.iso) = {}\n", b.hex());
        assert_eq!(find(&bsd, URL, "Fedora-Server-41.iso").unwrap(), b);
    }

    #[test]
    fn sha512sum_format_like_harvester() {
        let h = Checksum::of_bytes(Algorithm::Sha512, b"h");
        let list = format!("{}  harvester-v1.4.0-amd64.iso\n", h.hex());
        assert_eq!(find(&list, URL, "harvester-v1.4.0-amd64.iso").unwrap(), h);
    }

    #[test]
    fn clearsigned_lists_are_unwrapped() {
        let a = Checksum::sha256(b"a");
        let signed = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n# SHA256 checksums\nSHA256 (image.iso) = {}\n- -dash escaped line\n-----BEGIN PGP SIGNATURE-----\n\nwsBcBAEBCAAQ\n-----END PGP SIGNATURE-----\n",
            a.hex()
        );
        assert_eq!(find(&signed, URL, "image.iso").unwrap(), a);
        assert!(strip_clearsign(&signed).contains("-dash escaped line"));
    }

    #[test]
    fn directory_prefixes_match_when_unique() {
        let a = Checksum::sha256(b"a");
        let list = format!("{}  ./images/a.iso\n", a.hex());
        assert_eq!(find(&list, URL, "a.iso").unwrap(), a);
        let two = format!(
            "{}  x/a.iso\n{}  y/a.iso\n",
            a.hex(),
            Checksum::sha256(b"b").hex()
        );
        assert!(matches!(
            find(&two, URL, "a.iso"),
            Err(ListError::Conflicting { .. })
        ));
    }

    #[test]
    fn conflicting_duplicates_are_refused_but_identical_ones_accepted() {
        let a = Checksum::sha256(b"a");
        let same = format!("{0}  a.iso\n{0}  a.iso\n", a.hex());
        assert_eq!(find(&same, URL, "a.iso").unwrap(), a);
        let conflict = format!(
            "{}  a.iso\n{}  a.iso\n",
            a.hex(),
            Checksum::sha256(b"b").hex()
        );
        let err = find(&conflict, URL, "a.iso").unwrap_err();
        assert_eq!(
            err.to_string(),
            "https://v/SUMS lists `a.iso` more than once with different digests"
        );
    }

    #[test]
    fn missing_and_malformed_entries_name_the_list_and_file() {
        let err = find("abc  f\n", URL, "f").unwrap_err();
        assert!(
            err.to_string()
                .contains("https://v/SUMS has a malformed entry for `f`"),
            "{err}"
        );
        let err = find(
            &format!("{}  g\n", Checksum::sha256(b"g").hex()),
            URL,
            "nope.iso",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`nope.iso` is not listed in https://v/SUMS"
        );
    }

    #[test]
    fn a_single_bare_digest_applies_to_any_file() {
        let a = Checksum::sha256(b"a");
        assert_eq!(find(&format!("{}\n", a.hex()), URL, "anything").unwrap(), a);
    }

    #[test]
    fn file_names_of_urls() {
        assert_eq!(file_name_of("https://h/a/b.iso?x=1"), "b.iso");
    }
}
