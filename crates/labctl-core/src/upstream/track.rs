//! What an image's `track:` block declares: the channel its new versions come from, the policy
//! that picks among them, and the templates that turn a version into URLs.

use serde::Serialize;

use super::policy::Policy;
use super::template;

/// The GitHub REST API when neither the manifest nor `GITHUB_API_URL` names another.
pub const GITHUB_API: &str = "https://api.github.com";
/// Where Harvester's releases are tagged.
pub const HARVESTER_REPOSITORY: &str = "harvester/harvester";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelKind {
    Talos,
    Github,
    Harvester,
}

impl ChannelKind {
    pub const NAMES: [&'static str; 3] = ["talos", "github", "harvester"];

    pub fn name(self) -> &'static str {
        match self {
            ChannelKind::Talos => "talos",
            ChannelKind::Github => "github",
            ChannelKind::Harvester => "harvester",
        }
    }

    pub fn from_name(s: &str) -> Option<ChannelKind> {
        match s {
            "talos" => Some(ChannelKind::Talos),
            "github" => Some(ChannelKind::Github),
            "harvester" => Some(ChannelKind::Harvester),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// The Talos Image Factory at `factory` (`GET /versions`, `GET /versions?broken=true`); the
    /// image URL is `{factory}/image/{schematic}/{version}/{file}`.
    Talos {
        factory: String,
        schematic: String,
        file: String,
    },
    /// A repository's GitHub releases; the image is the release asset the URL names.
    Github {
        repository: String,
        /// The REST API base the manifest names; else `GITHUB_API_URL`, else api.github.com.
        api: Option<String>,
    },
    /// Harvester: versions from its GitHub releases, checksums from each version's folder
    /// (`version.yaml`, `harvester-<v>-amd64.sha512`).
    Harvester {
        repository: String,
        api: Option<String>,
        /// The release folder, with its placeholder (`https://…/harvester/{{ version }}/`).
        folder: String,
    },
}

impl Channel {
    pub fn kind(&self) -> ChannelKind {
        match self {
            Channel::Talos { .. } => ChannelKind::Talos,
            Channel::Github { .. } => ChannelKind::Github,
            Channel::Harvester { .. } => ChannelKind::Harvester,
        }
    }

    /// The repository whose releases list the versions (GitHub and Harvester).
    pub fn repository(&self) -> Option<&str> {
        match self {
            Channel::Talos { .. } => None,
            Channel::Github { repository, .. } | Channel::Harvester { repository, .. } => {
                Some(repository)
            }
        }
    }

    /// The GitHub API the manifest names, if it does.
    pub fn api(&self) -> Option<&str> {
        match self {
            Channel::Talos { .. } => None,
            Channel::Github { api, .. } | Channel::Harvester { api, .. } => api.as_deref(),
        }
    }
}

/// The image's fields as written, placeholders and all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    pub url: String,
    pub signature_url: Option<String>,
    /// The URL of a `file:` checksum list.
    pub checksum_list: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub channel: Channel,
    pub policy: Policy,
    /// Images of one group are proposed in one pull request.
    pub group: Option<String>,
    pub templates: Templates,
}

impl Track {
    fn render(text: &str, version: &str) -> String {
        // Validation expanded these templates once already; they cannot fail now.
        template::expand(text, Some(version)).unwrap_or_else(|_| text.to_string())
    }

    pub fn url_for(&self, version: &str) -> String {
        Track::render(&self.templates.url, version)
    }

    pub fn signature_url_for(&self, version: &str) -> Option<String> {
        self.templates
            .signature_url
            .as_deref()
            .map(|t| Track::render(t, version))
    }

    pub fn checksum_list_for(&self, version: &str) -> Option<String> {
        self.templates
            .checksum_list
            .as_deref()
            .map(|t| Track::render(t, version))
    }

    /// The release folder of a Harvester version.
    pub fn folder_for(&self, version: &str) -> Option<String> {
        match &self.channel {
            Channel::Harvester { folder, .. } => Some(Track::render(folder, version)),
            _ => None,
        }
    }
}

/// The last path segment of a URL: the asset or file name.
pub fn file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// `{factory}/image/{schematic}/{{ version }}/{file}` split into its parts; `None` when the URL
/// template is not a factory image URL with the version in its place.
pub fn talos_parts(url_template: &str) -> Option<(String, String, String)> {
    let (factory, rest) = url_template.split_once("/image/")?;
    let mut segments = rest.split('/');
    let (schematic, version, file) = (segments.next()?, segments.next()?, segments.next()?);
    if segments.next().is_some()
        || !matches!(version.trim_matches(['{', '}', ' ']), "version")
        || !version.starts_with("{{")
        || schematic.is_empty()
        || !schematic.bytes().all(|b| b.is_ascii_hexdigit())
        || file.is_empty()
        || template::mentions_version(file)
        || factory.is_empty()
    {
        return None;
    }
    Some((factory.to_string(), schematic.to_string(), file.to_string()))
}

/// The release folder of a Harvester URL template: everything up to and including the
/// `{{ version }}` segment. `None` when the version is not a folder of its own (a branch
/// folder such as `harvester/master/` or `harvester/v1.4/` is rebuilt in place).
pub fn harvester_folder(url_template: &str) -> Option<String> {
    let at = ["/{{ version }}/", "/{{version}}/"]
        .iter()
        .find_map(|p| url_template.find(p).map(|i| i + p.len()))?;
    Some(url_template[..at].to_string())
}

/// A URL under a Harvester branch folder (`…/harvester/master/…`, `…/harvester/v1.4/…`): its
/// bytes are rebuilt in place, so a checksum pinned today will not match tomorrow.
pub fn mutable_harvester_url(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("/harvester/")?;
    let folder = rest.split('/').next()?;
    if rest.split('/').count() < 2 {
        return None;
    }
    let full_version = super::version::Semver::parse(folder).is_some();
    (!full_version).then(|| folder.to_string())
}

/// `owner/name`, as GitHub spells repositories.
pub fn valid_repository(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p.len() <= 100
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && p != "."
                && p != ".."
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_urls_split_into_their_parts() {
        let url = "https://factory.talos.dev/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/{{ version }}/metal-amd64.raw.zst";
        let (factory, schematic, file) = talos_parts(url).unwrap();
        assert_eq!(factory, "https://factory.talos.dev");
        assert!(schematic.starts_with("376567"));
        assert_eq!(file, "metal-amd64.raw.zst");
        for bad in [
            "https://factory.talos.dev/image/abc/v1.9.1/metal-amd64.raw.zst",
            "https://factory.talos.dev/image/abc/{{ version }}/x/metal-amd64.raw.zst",
            "https://factory.talos.dev/image/not-hex/{{ version }}/metal-amd64.raw.zst",
            "https://factory.talos.dev/image/abc/{{ version }}/",
            "https://factory.talos.dev/images/abc/{{ version }}/metal-amd64.raw.zst",
        ] {
            assert_eq!(talos_parts(bad), None, "{bad}");
        }
    }

    #[test]
    fn harvester_release_folders_and_branch_folders() {
        assert_eq!(
            harvester_folder("https://releases.rancher.com/harvester/{{ version }}/harvester-{{ version }}-amd64.iso").as_deref(),
            Some("https://releases.rancher.com/harvester/{{ version }}/")
        );
        assert_eq!(
            harvester_folder(
                "https://releases.rancher.com/harvester/master/harvester-{{ version }}-amd64.iso"
            ),
            None
        );
        assert_eq!(
            mutable_harvester_url(
                "https://releases.rancher.com/harvester/master/harvester-master-amd64.iso"
            )
            .as_deref(),
            Some("master")
        );
        assert_eq!(
            mutable_harvester_url(
                "https://releases.rancher.com/harvester/v1.4/harvester-v1.4-amd64.iso"
            )
            .as_deref(),
            Some("v1.4")
        );
        assert_eq!(
            mutable_harvester_url(
                "https://releases.rancher.com/harvester/v1.4.0/harvester-v1.4.0-amd64.iso"
            ),
            None
        );
        assert_eq!(
            mutable_harvester_url("https://e.example/harvester.iso"),
            None
        );
    }

    #[test]
    fn names_and_repositories() {
        assert_eq!(file_name("https://h/a/b/c.iso?x=1"), "c.iso");
        assert!(valid_repository("vyos/vyos-nightly-build"));
        for bad in ["vyos", "a/b/c", "/b", "a/", "a/..", "a b/c"] {
            assert!(!valid_repository(bad), "{bad}");
        }
        let track = Track {
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
        };
        let v = "2025.11.30-0019-rolling";
        assert_eq!(
            file_name(&track.url_for(v)),
            "vyos-2025.11.30-0019-rolling-generic-amd64.iso"
        );
        assert!(track
            .signature_url_for(v)
            .unwrap()
            .ends_with(".iso.minisig"));
        assert_eq!(track.checksum_list_for(v), None);
    }
}
