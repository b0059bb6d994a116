//! The manifest's versioned images: `version:` written into the image's fields, and the
//! `track:` block that says where new versions come from.

use crate::manifest::model::Source;
use crate::manifest::schema::{declared_name, valid_name, Fields, Reader};
use crate::manifest::yaml::{Node, Value};
use crate::upstream::policy::{parse_age, MinorPolicy, Policy};
use crate::upstream::template::{self, check_version_text};
use crate::upstream::track::{
    harvester_folder, talos_parts, valid_repository, Channel, ChannelKind, Templates, Track,
    HARVESTER_REPOSITORY,
};
use crate::upstream::version::VersionOrder;

const TRACK_FIELDS: [&str; 8] = [
    "channel",
    "repository",
    "api",
    "order",
    "minor",
    "prereleases",
    "minAge",
    "group",
];

/// A string at `path` below `node`, as written.
fn written_string<'n>(node: &'n Node, path: &[&str]) -> Option<&'n str> {
    let mut at = node;
    for name in path {
        let Value::Map(entries) = &at.value else {
            return None;
        };
        at = &entries.iter().find(|(k, _)| k.name == *name)?.1;
    }
    match &at.value {
        Value::String(s) => Some(s),
        _ => None,
    }
}

impl Reader<'_> {
    /// The image entry with `{{ version }}` replaced by its `version:` in every string below it.
    pub(super) fn expand_version(&mut self, item: &Node) -> Node {
        let mut out = item.clone();
        let Value::Map(entries) = &mut out.value else {
            return out;
        };
        let label = declared_name(item);
        let version = match entries.iter().find(|(k, _)| k.name == "version") {
            // Present: expanded only when it can be written into URLs; `version()` says why not.
            Some((_, n)) => match &n.value {
                Value::String(v) if check_version_text(v).is_ok() => Some(Some(v.clone())),
                _ => None,
            },
            None => Some(None),
        };
        let Some(version) = version else {
            return out;
        };
        let mut problems = Vec::new();
        for (key, node) in entries.iter_mut() {
            if key.name != "version" {
                expand_node(node, version.as_deref(), &mut problems);
            }
        }
        for (loc, problem) in problems {
            let hint = match problem {
                template::TemplateError::NoVersion => {
                    "add `version: <the version>` to the image; its fields say `{{ version }}` where it goes"
                }
                template::TemplateError::Unknown(_) => {
                    "`{{ version }}` is the version as written, `{{ version.bare }}` the same without a leading `v`"
                }
            };
            self.error_hint(loc, label.as_deref(), problem.to_string(), hint);
        }
        out
    }

    /// `version:`: a string that can be written into URLs and keys.
    pub(super) fn version(&mut self, f: &Fields, image: Option<&str>) -> Option<String> {
        let node = f.get("version")?;
        match &node.value {
            Value::String(v) => match check_version_text(v) {
                Ok(()) => Some(v.clone()),
                Err(e) => {
                    self.error(node.loc, image, e.to_string());
                    None
                }
            },
            other => {
                let written = node.raw.clone().unwrap_or_default();
                self.error_hint(
                    node.loc,
                    image,
                    format!("`version` must be a string, found {}", other.kind()),
                    &format!("quote it, so that YAML keeps it as written: version: \"{written}\""),
                );
                None
            }
        }
    }

    /// `track:`; `written` is the image entry as the file has it (its templates), `version` the
    /// image's version, `source` its source as read.
    ///
    /// Long on purpose: one block per field and per channel's rule, each with its own error,
    /// read top to bottom like the reference in docs/manifest.md.
    pub(super) fn track(
        &mut self,
        node: &Node,
        written: &Node,
        version: Option<&str>,
        source: Option<&Source>,
        image: Option<&str>,
    ) -> Option<Track> {
        let f = self.fields(node, "track", &TRACK_FIELDS, image)?;
        let kind = match f.get("channel") {
            None => {
                self.error_hint(
                    node.loc,
                    image,
                    "missing required field `track.channel`",
                    &format!("use one of {}", ChannelKind::NAMES.join(", ")),
                );
                None
            }
            Some(n) => {
                let s = self.string(n, "track.channel", image)?;
                let kind = ChannelKind::from_name(&s);
                if kind.is_none() {
                    self.error_hint(
                        n.loc,
                        image,
                        format!("unknown channel `{s}`"),
                        &format!("use one of {}", ChannelKind::NAMES.join(", ")),
                    );
                }
                kind
            }
        };
        let policy = self.policy(&f, kind, image);
        let group = match f.get("group") {
            None => None,
            Some(n) => {
                let g = self.string(n, "track.group", image)?;
                if !valid_name(&g) {
                    self.error(n.loc, image, format!("invalid group name `{g}`"));
                    return None;
                }
                Some(g)
            }
        };
        let api = match f.get("api") {
            None => None,
            Some(n) => {
                let a = self.string(n, "track.api", image)?;
                self.check_source_url(&a, n.loc, image, "track.api");
                Some(a.trim_end_matches('/').to_string())
            }
        };
        let repository = match f.get("repository") {
            None => None,
            Some(n) => {
                let r = self.string(n, "track.repository", image)?;
                if !valid_repository(&r) {
                    self.error_hint(
                        n.loc,
                        image,
                        format!("`track.repository` `{r}` is not a GitHub repository"),
                        "write it as OWNER/NAME, e.g. vyos/vyos-nightly-build",
                    );
                    return None;
                }
                Some(r)
            }
        };
        let kind = kind?;
        let policy = policy?;

        let Some(Source::Http(http)) = source else {
            if matches!(source, Some(Source::Packer(_))) {
                self.error_hint(
                    node.loc,
                    image,
                    "a Packer image cannot be tracked",
                    "track the image it is built from; the plan rebuilds this one when that changes",
                );
            }
            return None;
        };
        let Some(version) = version else {
            self.error_hint(
                node.loc,
                image,
                "`track` needs the image's `version`",
                "add `version: <current version>` and write `{{ version }}` where the URL, destination and name carry it",
            );
            return None;
        };
        let url = written_string(written, &["source", "url"]).unwrap_or(&http.url);
        if !template::mentions_version(url) {
            self.error_hint(
                node.loc,
                image,
                "`source.url` does not say `{{ version }}`, so a new version could not change it",
                "write `{{ version }}` where the URL carries the version",
            );
            return None;
        }
        let branch_folder = kind == ChannelKind::Harvester
            && (harvester_folder(url).is_none()
                || crate::upstream::version::Semver::parse(version).is_none());
        if branch_folder {
            self.error_hint(
                node.loc,
                image,
                "Harvester's branch folders (harvester/master/, harvester/v1.4/) are rebuilt in place and cannot be tracked",
                "track a release folder: write the URL as https://releases.rancher.com/harvester/{{ version }}/… with a release tag such as v1.4.0 as the version",
            );
            return None;
        }
        if policy.order.parse(version).is_none() {
            self.error_hint(
                node.loc,
                image,
                format!(
                    "`version` `{version}` is not a {} version (like {})",
                    policy.order.name(),
                    policy.order.example()
                ),
                "set `track.order` to the order the channel's versions follow",
            );
            return None;
        }
        if kind == ChannelKind::Talos && (repository.is_some() || api.is_some()) {
            self.error(
                node.loc,
                image,
                "`track.repository` and `track.api` are for the github and harvester channels; the factory is the one in `source.url`",
            );
            return None;
        }
        let channel = match kind {
            ChannelKind::Talos => match talos_parts(url) {
                Some((factory, schematic, file)) => Channel::Talos {
                    factory,
                    schematic,
                    file,
                },
                None => {
                    self.error_hint(
                        node.loc,
                        image,
                        "`source.url` is not a Talos Image Factory image URL",
                        "write it as https://<factory>/image/<schematic ID>/{{ version }}/<platform>-<arch>.raw.xz (or .raw.zst)",
                    );
                    return None;
                }
            },
            ChannelKind::Github => match repository {
                Some(repository) => Channel::Github { repository, api },
                None => {
                    self.error_hint(
                        node.loc,
                        image,
                        "missing required field `track.repository`",
                        "the repository whose releases carry the image, e.g. vyos/vyos-nightly-build",
                    );
                    return None;
                }
            },
            ChannelKind::Harvester => Channel::Harvester {
                repository: repository.unwrap_or_else(|| HARVESTER_REPOSITORY.into()),
                api,
                folder: harvester_folder(url).unwrap_or_default(),
            },
        };
        let signature_url = written_string(written, &["source", "signature", "minisign", "url"])
            .or_else(|| written_string(written, &["source", "signature", "pgp", "url"]))
            .map(str::to_string);
        let checksum_list = written_string(written, &["source", "checksum"])
            .and_then(|c| c.strip_prefix("file:"))
            .map(str::to_string);
        Some(Track {
            channel,
            policy,
            group,
            templates: Templates {
                url: url.to_string(),
                signature_url,
                checksum_list,
            },
        })
    }

    /// `policy:` — one block per field (ordering, minor, prereleases, minimum age), every
    /// problem collected; long on purpose, like the reference it follows.
    fn policy(
        &mut self,
        f: &Fields,
        kind: Option<ChannelKind>,
        image: Option<&str>,
    ) -> Option<Policy> {
        let mut policy = Policy::default();
        let mut ok = true;
        if let Some(n) = f.get("order") {
            let s = self.string(n, "track.order", image)?;
            match VersionOrder::from_name(&s) {
                Some(VersionOrder::Time) if kind != Some(ChannelKind::Github) => {
                    self.error(
                        n.loc,
                        image,
                        "`order: time` is for GitHub releases tagged by build time; this channel's versions are semantic",
                    );
                    ok = false;
                }
                Some(order) => policy.order = order,
                None => {
                    self.error_hint(
                        n.loc,
                        image,
                        format!("unknown version order `{s}`"),
                        &format!("use one of {}", VersionOrder::NAMES.join(", ")),
                    );
                    ok = false;
                }
            }
        }
        if let Some(n) = f.get("minor") {
            let s = self.string(n, "track.minor", image)?;
            match MinorPolicy::from_name(&s) {
                Some(_) if policy.order == VersionOrder::Time => {
                    self.error(
                        n.loc,
                        image,
                        "`minor` applies to semantic versions; time-ordered builds have no minors",
                    );
                    ok = false;
                }
                Some(m) => policy.minor = m,
                None => {
                    self.error_hint(
                        n.loc,
                        image,
                        format!("unknown minor policy `{s}`"),
                        "use `same` (patches only), `next` (up to the next minor) or `any`",
                    );
                    ok = false;
                }
            }
        }
        if let Some(n) = f.get("prereleases") {
            match n.value {
                Value::Bool(b) => policy.prereleases = b,
                ref other => {
                    self.error(
                        n.loc,
                        image,
                        format!(
                            "`track.prereleases` must be true or false, found {}",
                            other.kind()
                        ),
                    );
                    ok = false;
                }
            }
        }
        if let Some(n) = f.get("minAge") {
            let text = match &n.value {
                Value::String(s) => Some(s.clone()),
                _ => None,
            };
            match text.as_deref().and_then(parse_age) {
                Some(secs) => policy.min_age = Some(secs),
                None => {
                    self.error_hint(
                        n.loc,
                        image,
                        "`track.minAge` must be a duration such as `3d`",
                        "use a whole number with m, h, d or w: 90m, 12h, 3d, 2w",
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(policy)
    }
}

fn expand_node(
    node: &mut Node,
    version: Option<&str>,
    problems: &mut Vec<(crate::manifest::yaml::Loc, template::TemplateError)>,
) {
    match &mut node.value {
        Value::String(s) => match template::expand(s, version) {
            Ok(expanded) => *s = expanded,
            Err(e) => problems.push((node.loc, e)),
        },
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|n| expand_node(n, version, problems)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, n)| expand_node(n, version, problems)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::{parse, Manifest, NoFiles, Rules};
    use crate::upstream::{Channel, MinorPolicy, VersionOrder};

    const HEAD: &str = "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n";
    const SUM: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn load(images: &str) -> Result<Manifest, String> {
        let text = format!("{HEAD}{images}");
        parse(
            text.as_bytes(),
            std::path::Path::new("images.yaml"),
            std::path::Path::new("."),
            &NoFiles,
            Rules::default(),
        )
        .map(|(m, _)| m)
        .map_err(|e| e.to_string())
    }

    fn talos(track: &str) -> String {
        format!(
            r#"    - name: talos-{{{{ version.bare }}}}-metal-amd64
      version: v1.9.1
      source:
        type: http
        url: https://factory.talos.dev/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/{{{{ version }}}}/metal-amd64.raw.zst
        checksum: {SUM}
        decompress: zstd
      destination: talos/talos-{{{{ version }}}}-metal-amd64.raw
      validation: {{expected: {SUM}}}
{track}"#
        )
    }

    #[test]
    fn the_version_is_written_into_every_field_that_says_so() {
        let m = load(&talos(
            "      track: {channel: talos, minor: next, minAge: 3d}\n",
        ))
        .unwrap();
        let image = &m.images[0];
        assert_eq!(image.name, "talos-1.9.1-metal-amd64");
        assert_eq!(image.destination, "talos/talos-v1.9.1-metal-amd64.raw");
        assert_eq!(image.version.as_deref(), Some("v1.9.1"));
        let crate::manifest::Source::Http(http) = &image.source else {
            panic!()
        };
        assert!(
            http.url.contains("/v1.9.1/metal-amd64.raw.zst"),
            "{}",
            http.url
        );
        let track = image.track.as_ref().unwrap();
        assert_eq!(
            track.channel,
            Channel::Talos {
                factory: "https://factory.talos.dev".into(),
                schematic: "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
                    .into(),
                file: "metal-amd64.raw.zst".into()
            }
        );
        assert_eq!(track.policy.minor, MinorPolicy::Next);
        assert_eq!(track.policy.min_age, Some(3 * 86_400));
        assert!(track
            .url_for("v1.10.2")
            .contains("/v1.10.2/metal-amd64.raw.zst"));
    }

    #[test]
    fn vyos_rolling_builds_track_github_releases_by_time() {
        let m = load(&format!(
            r#"    - name: vyos-iso
      version: 2025.11.30-0019-rolling
      track: {{channel: github, repository: vyos/vyos-nightly-build, order: time, minAge: 1d}}
      source:
        type: http
        url: https://github.com/vyos/vyos-nightly-build/releases/download/{{{{ version }}}}/vyos-{{{{ version }}}}-generic-amd64.iso
        checksum: {SUM}
        signature:
          minisign:
            url: https://github.com/vyos/vyos-nightly-build/releases/download/{{{{ version }}}}/vyos-{{{{ version }}}}-generic-amd64.iso.minisig
            publicKey: RWSIhkR/dkM2DSaBRniv/bbbAf8hmDqdbOEmgXkf1RxRoxzodgKcDyGq
      destination: vyos/vyos-rolling-generic-amd64.iso
"#
        ))
        .unwrap();
        let track = m.images[0].track.as_ref().unwrap();
        assert_eq!(track.policy.order, VersionOrder::Time);
        assert_eq!(track.channel.repository(), Some("vyos/vyos-nightly-build"));
        assert!(track
            .signature_url_for("2025.12.01-0020-rolling")
            .unwrap()
            .ends_with(
                "/2025.12.01-0020-rolling/vyos-2025.12.01-0020-rolling-generic-amd64.iso.minisig"
            ));
    }

    #[test]
    fn harvester_tracks_release_folders_never_branch_folders() {
        let harvester = |folder: &str, version: &str| {
            format!(
                r#"    - name: harvester-iso
      version: {version}
      track: {{channel: harvester}}
      source:
        type: http
        url: https://releases.rancher.com/harvester/{folder}/harvester-{{{{ version }}}}-amd64.iso
        checksum: file:https://releases.rancher.com/harvester/{folder}/harvester-{{{{ version }}}}-amd64.sha512
      destination: harvester/harvester-amd64.iso
"#
            )
        };
        let m = load(&harvester("{{ version }}", "v1.4.0")).unwrap();
        let track = m.images[0].track.as_ref().unwrap();
        assert_eq!(track.channel.repository(), Some("harvester/harvester"));
        assert_eq!(
            track.checksum_list_for("v1.6.1").as_deref(),
            Some("https://releases.rancher.com/harvester/v1.6.1/harvester-v1.6.1-amd64.sha512")
        );
        assert_eq!(
            track.folder_for("v1.6.1").as_deref(),
            Some("https://releases.rancher.com/harvester/v1.6.1/")
        );
        let err = load(&harvester("master", "v1.4.0")).unwrap_err();
        assert!(err.contains("branch folders"), "{err}");
        let err = load(&harvester("{{ version }}", "v1.4")).unwrap_err();
        assert!(err.contains("branch folders"), "{err}");
    }

    #[test]
    fn tracking_problems_are_named() {
        let cases = [
            (
                "      track: {channel: talos, order: time}\n",
                "`order: time` is for GitHub",
            ),
            (
                "      track: {channel: nightly}\n",
                "unknown channel `nightly`",
            ),
            (
                "      track: {minor: next}\n",
                "missing required field `track.channel`",
            ),
            (
                "      track: {channel: talos, minor: some}\n",
                "unknown minor policy `some`",
            ),
            (
                "      track: {channel: talos, minAge: 3}\n",
                "`track.minAge` must be a duration",
            ),
            (
                "      track: {channel: talos, prereleases: 1}\n",
                "must be true or false",
            ),
            (
                "      track: {channel: talos, repository: a/b}\n",
                "are for the github and harvester",
            ),
            (
                "      track: {channel: github}\n",
                "missing required field `track.repository`",
            ),
            (
                "      track: {channel: github, repository: vyos}\n",
                "is not a GitHub repository",
            ),
            (
                "      track: {channel: github, repository: a/b, api: http://api.example}\n",
                "https",
            ),
            (
                "      track: {channel: talos, unknown: 1}\n",
                "unknown field `unknown` in track",
            ),
        ];
        for (track, expected) in cases {
            let err = load(&talos(track)).unwrap_err();
            assert!(err.contains(expected), "{track}: {err}");
        }
    }

    #[test]
    fn versions_and_placeholders_are_checked() {
        let no_version = talos("").replace("      version: v1.9.1\n", "");
        let err = load(&no_version).unwrap_err();
        assert!(err.contains("the image has no `version`"), "{err}");
        let number = talos("").replace("version: v1.9.1", "version: 1.10");
        let err = load(&number).unwrap_err();
        assert!(err.contains("version: \"1.10\""), "{err}");
        let slash = talos("").replace("version: v1.9.1", "version: v1/../x");
        let err = load(&slash).unwrap_err();
        assert!(err.contains("cannot be written into URLs"), "{err}");
        let unknown = talos("").replace("{{ version.bare }}", "{{ version.minor }}");
        let err = load(&unknown).unwrap_err();
        assert!(
            err.contains("unknown placeholder `{{ version.minor }}`"),
            "{err}"
        );
        let not_semver =
            talos("      track: {channel: talos}\n").replace("version: v1.9.1", "version: latest");
        let err = load(&not_semver).unwrap_err();
        assert!(
            err.contains("`version` `latest` is not a semver version"),
            "{err}"
        );
        // A literal URL cannot be moved by a bump.
        let literal = talos("      track: {channel: talos}\n")
            .replace("/{{ version }}/metal", "/v1.9.1/metal");
        let err = load(&literal).unwrap_err();
        assert!(err.contains("does not say `{{ version }}`"), "{err}");
        // Two images whose templates give the same destination collide like any others.
        let twice = format!(
            "{}{}",
            talos(""),
            talos("").replace("name: talos-", "name: other-")
        );
        let err = load(&twice).unwrap_err();
        assert!(err.contains("is also the destination"), "{err}");
    }
}
