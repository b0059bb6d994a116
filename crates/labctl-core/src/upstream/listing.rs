//! What the channels answer, as data: GitHub releases, the Talos factory's version lists,
//! Harvester's `version.yaml`. Fetched elsewhere; read and judged here.

use serde::Deserialize;

use super::assess::Release;
use super::track::{file_name, Channel, Track};
use crate::checksum::{Algorithm, Checksum};

/// One release from `GET /repos/{owner}/{repo}/releases`, with the fields labctl reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GithubRelease {
    pub tag_name: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    /// RFC 3339; `null` for drafts.
    #[serde(default)]
    pub published_at: Option<String>,
    /// The release notes (Markdown).
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub html_url: Option<String>,
    #[serde(default)]
    pub assets: Vec<GithubAsset>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GithubAsset {
    pub name: String,
    pub size: u64,
    pub browser_download_url: String,
    #[serde(default)]
    pub content_type: Option<String>,
    /// `sha256:<hex>`, computed by GitHub at upload (assets since 2025-06): integrity, not
    /// authenticity.
    #[serde(default)]
    pub digest: Option<String>,
}

impl GithubAsset {
    /// The digest GitHub computed, when it gave one labctl can read.
    pub fn checksum(&self) -> Option<Checksum> {
        self.digest.as_deref()?.parse().ok()
    }
}

impl GithubRelease {
    pub fn asset(&self, name: &str) -> Option<&GithubAsset> {
        self.assets.iter().find(|a| a.name == name)
    }

    pub fn published(&self) -> Option<u64> {
        crate::timefmt::parse_rfc3339(self.published_at.as_deref()?)
    }
}

/// The Talos factory's `GET /versions` and `GET /versions?broken=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TalosVersions {
    pub versions: Vec<String>,
    pub broken: Vec<String>,
}

/// What a channel listed for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    Talos(TalosVersions),
    Github(Vec<GithubRelease>),
}

/// The releases an image's policy chooses among. Drafts are never offered: their tags and
/// assets are not public. A GitHub release that lacks the image's asset (or its signature) is
/// listed with what it lacks, so that `outdated` can say why it is skipped.
pub fn releases(track: &Track, listing: &Listing) -> Vec<Release> {
    match listing {
        // `/versions` leaves broken versions out; they are listed here too, marked, so that a
        // pin on one is reported as broken rather than as gone.
        Listing::Talos(list) => list
            .versions
            .iter()
            .chain(list.broken.iter().filter(|b| !list.versions.contains(b)))
            .map(|v| Release {
                tag: v.clone(),
                // The factory publishes no release times.
                published_at: None,
                prerelease: false,
                broken: list.broken.contains(v),
                missing: None,
            })
            .collect(),
        Listing::Github(list) => list
            .iter()
            .filter(|r| !r.draft)
            .map(|r| Release {
                tag: r.tag_name.clone(),
                published_at: r.published(),
                prerelease: r.prerelease,
                broken: false,
                missing: missing_assets(track, r),
            })
            .collect(),
    }
}

/// The assets of `release` the image needs and the release does not have. Harvester's images
/// are in its release folder, not among the GitHub assets: nothing is required there.
fn missing_assets(track: &Track, release: &GithubRelease) -> Option<String> {
    if !matches!(track.channel, Channel::Github { .. }) {
        return None;
    }
    let version = &release.tag_name;
    let mut wanted = vec![track.url_for(version)];
    wanted.extend(track.signature_url_for(version));
    wanted.extend(track.checksum_list_for(version));
    let missing: Vec<String> = wanted
        .iter()
        .map(|url| file_name(url).to_string())
        .filter(|name| release.asset(name).is_none())
        .map(|name| format!("`{name}`"))
        .collect();
    match missing.len() {
        0 => None,
        1 => Some(format!("asset {}", missing[0])),
        _ => Some(format!("assets {}", missing.join(", "))),
    }
}

/// Harvester's `version.yaml` (a `harvesterhci.io/v1beta1` `Version`): the ISO and its SHA-512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarvesterVersion {
    pub iso_url: String,
    pub iso_checksum: Checksum,
    pub release_date: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HarvesterVersionError {
    #[error("not a YAML document: {0}")]
    Yaml(String),
    #[error("it has no `spec.isoURL` (Harvester's own upgrader ignores such a version)")]
    NoIsoUrl,
    #[error("it has no `spec.isoChecksum` (Harvester's own upgrader ignores such a version)")]
    NoIsoChecksum,
    #[error("`spec.isoChecksum` is not a SHA-512 digest")]
    BadIsoChecksum,
}

#[derive(Deserialize)]
struct VersionDoc {
    #[serde(default)]
    spec: Option<VersionSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VersionSpec {
    #[serde(default, rename = "isoURL")]
    iso_url: Option<String>,
    #[serde(default)]
    iso_checksum: Option<String>,
    #[serde(default)]
    release_date: Option<String>,
}

/// Reads a `version.yaml`. Small documents only: the caller caps what it fetched.
pub fn parse_harvester_version(text: &str) -> Result<HarvesterVersion, HarvesterVersionError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.max_aliases = 100;
    budget.max_nodes = 10_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let doc: VersionDoc = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        HarvesterVersionError::Yaml(e.to_string().lines().next().unwrap_or("").into())
    })?;
    let spec = doc.spec.ok_or(HarvesterVersionError::NoIsoUrl)?;
    let iso_url = spec
        .iso_url
        .filter(|u| !u.trim().is_empty())
        .ok_or(HarvesterVersionError::NoIsoUrl)?;
    let hex = spec
        .iso_checksum
        .filter(|c| !c.trim().is_empty())
        .ok_or(HarvesterVersionError::NoIsoChecksum)?;
    let hex = hex.trim();
    let hex = hex.strip_prefix("sha512:").unwrap_or(hex);
    let iso_checksum = Checksum::new(Algorithm::Sha512, &hex.to_ascii_lowercase())
        .map_err(|_| HarvesterVersionError::BadIsoChecksum)?;
    Ok(HarvesterVersion {
        iso_url: iso_url.trim().to_string(),
        iso_checksum,
        release_date: spec.release_date,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Policy, Templates};

    fn vyos_track() -> Track {
        Track {
            channel: Channel::Github {
                repository: "vyos/vyos-nightly-build".into(),
                api: None,
            },
            policy: Policy::default(),
            group: None,
            templates: Templates {
                url: "https://github.com/vyos/vyos-nightly-build/releases/download/{{ version }}/vyos-{{ version }}-generic-amd64.iso".into(),
                signature_url: Some("https://github.com/vyos/vyos-nightly-build/releases/download/{{ version }}/vyos-{{ version }}-generic-amd64.iso.minisig".into()),
                checksum_list: None,
            },
        }
    }

    fn release(tag: &str, assets: &[&str]) -> GithubRelease {
        GithubRelease {
            tag_name: tag.into(),
            name: None,
            draft: false,
            prerelease: false,
            published_at: Some("2025-11-30T00:39:12Z".into()),
            body: None,
            html_url: None,
            assets: assets
                .iter()
                .map(|a| GithubAsset {
                    name: a.replace("TAG", tag),
                    size: 1,
                    browser_download_url: String::new(),
                    content_type: None,
                    digest: None,
                })
                .collect(),
        }
    }

    #[test]
    fn github_releases_become_releases_with_what_they_lack() {
        let mut draft = release("2025.12.01-0020-rolling", &[]);
        draft.draft = true;
        let listing = Listing::Github(vec![
            draft,
            release(
                "2025.11.30-0019-rolling",
                &[
                    "vyos-TAG-generic-amd64.iso",
                    "vyos-TAG-generic-amd64.iso.minisig",
                ],
            ),
            release("2025.11.29-0019-rolling", &["vyos-TAG-generic-amd64.iso"]),
            release("2025.11.28-0019-rolling", &[]),
        ]);
        let r = releases(&vyos_track(), &listing);
        assert_eq!(r.len(), 3, "drafts are never offered");
        assert_eq!(r[0].missing, None);
        assert_eq!(r[0].published_at, Some(1_764_463_152));
        assert_eq!(
            r[1].missing.as_deref(),
            Some("asset `vyos-2025.11.29-0019-rolling-generic-amd64.iso.minisig`")
        );
        assert_eq!(
            r[2].missing.as_deref(),
            Some("assets `vyos-2025.11.28-0019-rolling-generic-amd64.iso`, `vyos-2025.11.28-0019-rolling-generic-amd64.iso.minisig`")
        );
    }

    #[test]
    fn talos_versions_carry_the_broken_list_and_no_time() {
        let track = Track {
            channel: Channel::Talos {
                factory: "https://f".into(),
                schematic: "ab".into(),
                file: "metal-amd64.raw.zst".into(),
            },
            ..vyos_track()
        };
        let listing = Listing::Talos(TalosVersions {
            versions: vec!["v1.9.1".into(), "v1.9.2".into()],
            broken: vec!["v1.9.2".into()],
        });
        let r = releases(&track, &listing);
        assert!(!r[0].broken && r[1].broken);
        // A broken version the factory no longer lists is still known, as broken.
        let gone = Listing::Talos(TalosVersions {
            versions: vec!["v1.9.1".into()],
            broken: vec!["v1.9.0".into()],
        });
        let r = releases(&track, &gone);
        assert_eq!(r.len(), 2);
        assert!(r[1].tag == "v1.9.0" && r[1].broken);
        assert!(r
            .iter()
            .all(|r| r.published_at.is_none() && r.missing.is_none()));
    }

    #[test]
    fn harvester_version_yaml() {
        let sha = "a".repeat(128);
        let text = format!(
            "apiVersion: harvesterhci.io/v1beta1\nkind: Version\nmetadata:\n  name: v1.6.1\n  namespace: harvester-system\nspec:\n  isoChecksum: '{sha}'\n  isoURL: https://releases.rancher.com/harvester/v1.6.1/harvester-v1.6.1-amd64.iso\n  releaseDate: '20250926'\n  minUpgradableVersion: 'v1.5.0'\n  tags:\n  - latest\n"
        );
        let v = parse_harvester_version(&text).unwrap();
        assert!(v.iso_url.ends_with("harvester-v1.6.1-amd64.iso"));
        assert_eq!(v.iso_checksum.hex(), sha);
        assert_eq!(v.release_date.as_deref(), Some("20250926"));
        let no_sum = text.replace(&format!("  isoChecksum: '{sha}'\n"), "");
        assert_eq!(
            parse_harvester_version(&no_sum),
            Err(HarvesterVersionError::NoIsoChecksum)
        );
        let short = text.replace(&sha, "abc");
        assert_eq!(
            parse_harvester_version(&short),
            Err(HarvesterVersionError::BadIsoChecksum)
        );
        assert!(matches!(
            parse_harvester_version("{ not: [yaml"),
            Err(HarvesterVersionError::Yaml(_))
        ));
        assert_eq!(
            parse_harvester_version("spec: {}\n"),
            Err(HarvesterVersionError::NoIsoUrl)
        );
    }
}
