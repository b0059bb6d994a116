//! The schema rules of an image's `source:` (HTTP with its checksum and signature, or a Packer
//! build) and of its `destination:`.

use super::*;

impl Reader<'_> {
    pub(super) fn source(&mut self, node: &Node, image: Option<&str>) -> Option<Source> {
        const HTTP: [&str; 5] = ["type", "url", "checksum", "decompress", "signature"];
        const PACKER: [&str; 4] = ["type", "path", "variables", "artifact"];
        let kind = match &node.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == "type"),
            _ => None,
        };
        let Some((_, type_node)) = kind else {
            if let Value::Map(_) = node.value {
                self.error_hint(
                    node.loc,
                    image,
                    "missing required field `source.type`",
                    "use `type: http` or `type: packer`",
                );
            } else {
                self.error(
                    node.loc,
                    image,
                    format!("`source` must be a mapping, found {}", node.value.kind()),
                );
            }
            return None;
        };
        match &type_node.value {
            Value::String(t) if t == "http" => {
                let f = self.fields(node, "source", &HTTP, image)?;
                self.http_source(&f, node.loc, image).map(Source::Http)
            }
            Value::String(t) if t == "packer" => {
                let f = self.fields(node, "source", &PACKER, image)?;
                self.packer_source(&f, node.loc, image).map(Source::Packer)
            }
            other => {
                let shown = match other {
                    Value::String(s) => format!("`{s}`"),
                    v => v.kind().to_string(),
                };
                self.error_hint(
                    type_node.loc,
                    image,
                    format!("unknown source type {shown}"),
                    "use `type: http` or `type: packer`",
                );
                None
            }
        }
    }

    pub(super) fn http_source(
        &mut self,
        f: &Fields,
        loc: Loc,
        image: Option<&str>,
    ) -> Option<HttpSource> {
        let url = self.required_string(f, loc, "url", "source.url", image);
        if let (Some(u), Some(n)) = (&url, f.get("url")) {
            self.check_source_url(u, n.loc, image, "source.url");
        }
        let checksum = match f.get("checksum") {
            None if self.rules.allow_pin => Some(SourceChecksum::Pin),
            None => {
                self.error_hint(
                    loc,
                    image,
                    "missing required field `source.checksum`",
                    "every downloaded byte is verified: give `sha256:<hex>`, `sha512:<hex>` or `file:<https url of a checksum list>`",
                );
                None
            }
            Some(n) => self.source_checksum(n, image),
        };
        let decompress = match f.get("decompress") {
            None => Ok(None),
            Some(n) => match self.string(n, "source.decompress", image) {
                None => Err(()),
                Some(s) => match Compression::from_name(&s) {
                    Some(c) => Ok(Some(c)),
                    None => {
                        self.error_hint(
                            n.loc,
                            image,
                            format!("unknown decompression `{s}`"),
                            &format!("use one of {}", Compression::NAMES.join(", ")),
                        );
                        Err(())
                    }
                },
            },
        };
        let signature = match f.get("signature") {
            None => Ok(None),
            Some(n) => self
                .signature(n, image, checksum.as_ref())
                .map(Some)
                .ok_or(()),
        };
        Some(HttpSource {
            url: url?,
            checksum: checksum?,
            decompress: decompress.ok()?,
            signature: signature.ok()?,
        })
    }

    /// `signature:` — minisign or PGP, each with its own fields and key sources. Long on
    /// purpose: one arm per kind, every problem collected.
    pub(super) fn signature(
        &mut self,
        node: &Node,
        image: Option<&str>,
        checksum: Option<&SourceChecksum>,
    ) -> Option<Signature> {
        let f = self.fields(node, "source.signature", &["minisign", "pgp"], image)?;
        match (f.get("minisign"), f.get("pgp")) {
            (Some(m), None) => {
                let g = self.fields(m, "signature.minisign", &["url", "publicKey"], image)?;
                let url = self.required_string(&g, m.loc, "url", "signature.minisign.url", image);
                if let (Some(u), Some(n)) = (&url, g.get("url")) {
                    self.check_source_url(u, n.loc, image, "signature.minisign.url");
                }
                let key = self.required_string(
                    &g,
                    m.loc,
                    "publicKey",
                    "signature.minisign.publicKey",
                    image,
                );
                if let (Some(k), Some(n)) = (&key, g.get("publicKey")) {
                    if let Err(e) = crate::signature::MinisignKey::parse(k) {
                        self.error_hint(
                            n.loc,
                            image,
                            e.to_string(),
                            "the public key is the base64 line of the vendor's minisign.pub (it starts with `RW`)",
                        );
                        return None;
                    }
                }
                Some(Signature::Minisign {
                    url: url?,
                    public_key: key?.trim().to_string(),
                })
            }
            (None, Some(p)) => {
                let g = self.fields(
                    p,
                    "signature.pgp",
                    &["url", "publicKey", "publicKeyFile"],
                    image,
                )?;
                if !matches!(checksum, Some(SourceChecksum::List { .. }) | None) {
                    self.error_hint(
                        p.loc,
                        image,
                        "an OpenPGP signature covers a checksum list, but `source.checksum` is not `file:<url>`",
                        "point `checksum` at the signed list (e.g. `file:https://…/SHA256SUMS`)",
                    );
                }
                let url = match g.get("url") {
                    None => None,
                    Some(n) => {
                        let u = self.string(n, "signature.pgp.url", image)?;
                        self.check_source_url(&u, n.loc, image, "signature.pgp.url");
                        Some(u)
                    }
                };
                let armored = match (g.get("publicKey"), g.get("publicKeyFile")) {
                    (Some(k), None) => self
                        .string(k, "signature.pgp.publicKey", image)
                        .map(|s| (s, k.loc)),
                    (None, Some(path_node)) => {
                        let path = self.string(path_node, "signature.pgp.publicKeyFile", image)?;
                        match self.dir.read_file(&path, MAX_KEY_FILE_BYTES) {
                            Ok(text) => Some((text, path_node.loc)),
                            Err(e) => {
                                self.error_hint(
                                    path_node.loc,
                                    image,
                                    format!("cannot use the public key file `{path}`: {e}"),
                                    "file references are relative to the manifest's directory and stay inside it",
                                );
                                None
                            }
                        }
                    }
                    _ => {
                        self.error(
                            p.loc,
                            image,
                            "give exactly one of `publicKey` and `publicKeyFile`",
                        );
                        None
                    }
                };
                let (armored, key_loc) = armored?;
                match crate::signature::PgpKey::parse(&armored) {
                    Ok(key) => Some(Signature::Pgp {
                        url,
                        armored_key: armored,
                        fingerprint: key.fingerprint,
                    }),
                    Err(e) => {
                        self.error(key_loc, image, e.to_string());
                        None
                    }
                }
            }
            _ => {
                self.error(node.loc, image, "give exactly one of `minisign` and `pgp`");
                None
            }
        }
    }

    pub(in crate::manifest) fn check_source_url(
        &mut self,
        url: &str,
        loc: Loc,
        image: Option<&str>,
        what: &str,
    ) {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            if url.len() <= "https://".len() || url["https://".len()..].starts_with('/') {
                self.error(loc, image, format!("`{what}` `{url}` has no host"));
            }
            return;
        }
        if lower.starts_with("http://")
            && self.rules.allow_insecure_loopback
            && is_loopback_http(url)
        {
            return;
        }
        let hint = if lower.starts_with("http://") && is_loopback_http(url) {
            "plain http is accepted only for loopback test servers with LABCTL_ALLOW_INSECURE_LOOPBACK=1"
        } else {
            "sources must be fetched over https:// so that what is downloaded is what the vendor serves"
        };
        self.error_hint(
            loc,
            image,
            format!("`{what}` `{url}` is not an https:// URL"),
            hint,
        );
    }

    pub(super) fn source_checksum(
        &mut self,
        node: &Node,
        image: Option<&str>,
    ) -> Option<SourceChecksum> {
        let s = self.string(node, "source.checksum", image)?;
        if s == "pin" {
            if self.rules.allow_pin {
                return Some(SourceChecksum::Pin);
            }
            self.error_hint(
                node.loc,
                image,
                "`source.checksum` is still `pin`",
                "run `labctl pin --write` to download the source once and fill in its checksum",
            );
            return None;
        }
        if let Some(url) = s.strip_prefix("file:") {
            self.check_source_url(url, node.loc, image, "source.checksum list");
            return Some(SourceChecksum::List {
                url: url.to_string(),
            });
        }
        match s.parse::<Checksum>() {
            Ok(c) => Some(SourceChecksum::Digest(c)),
            Err(e) => {
                self.error(node.loc, image, format!("`source.checksum`: {e}"));
                None
            }
        }
    }

    pub(super) fn packer_source(
        &mut self,
        f: &Fields,
        loc: Loc,
        image: Option<&str>,
    ) -> Option<PackerSource> {
        let path = self.required_string(f, loc, "path", "source.path", image);
        if let (Some(p), Some(n)) = (&path, f.get("path")) {
            match self.dir.check_dir(p) {
                Ok(()) => {}
                Err(crate::manifest::DirProblem::Outside(why)) => self.error_hint(
                    n.loc,
                    image,
                    format!("`source.path` `{p}` {why}"),
                    "`source.path` is a directory relative to the manifest's directory, and stays inside it",
                ),
                Err(crate::manifest::DirProblem::Missing) => self.error_hint(
                    n.loc,
                    image,
                    format!("Packer template directory `{p}` does not exist"),
                    "`source.path` is relative to the directory that holds the manifest",
                ),
            }
        }
        let artifact = self.required_string(f, loc, "artifact", "source.artifact", image);
        if let (Some(a), Some(n)) = (&artifact, f.get("artifact")) {
            if let Err(why) = check_relative_key(a) {
                self.error(n.loc, image, format!("`source.artifact` `{a}` {why}"));
            }
        }
        let mut variables = BTreeMap::new();
        if let Some(vars) = f.get("variables") {
            match &vars.value {
                Value::Map(entries) => {
                    for (k, v) in entries {
                        // Exactly as written: Packer gets `1.10`, `yes` and `0x1F`, not what a
                        // YAML parser makes of them.
                        let value = match &v.value {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => v.raw.clone().unwrap_or_else(|| n.clone()),
                            Value::Bool(b) => v.raw.clone().unwrap_or_else(|| b.to_string()),
                            other => {
                                self.error(
                                    v.loc,
                                    image,
                                    format!(
                                        "variable `{}` must be a string, number or boolean, found {}",
                                        k.name,
                                        other.kind()
                                    ),
                                );
                                continue;
                            }
                        };
                        if let Err(e) = reference::parse_all(&value) {
                            self.error(v.loc, image, format!("variable `{}`: {e}", k.name));
                        }
                        variables.insert(k.name.clone(), value);
                    }
                }
                other => self.error(
                    vars.loc,
                    image,
                    format!(
                        "`source.variables` must be a mapping, found {}",
                        other.kind()
                    ),
                ),
            }
        }
        Some(PackerSource {
            path: path?,
            variables,
            artifact: artifact?,
        })
    }

    pub(super) fn destination(&mut self, node: &Node, image: Option<&str>) -> Option<String> {
        let (value, loc) = match &node.value {
            Value::String(s) => (s.clone(), node.loc),
            Value::Map(_) => {
                let f = self.fields(node, "destination", &["path"], image)?;
                let p = self.required_string(&f, node.loc, "path", "destination.path", image)?;
                (p, f.get("path").map(|n| n.loc).unwrap_or(node.loc))
            }
            other => {
                self.error(
                    node.loc,
                    image,
                    format!(
                        "`destination` must be a key string or `{{path: …}}`, found {}",
                        other.kind()
                    ),
                );
                return None;
            }
        };
        if crate::layout::is_index_file(&value) {
            self.error_hint(
                loc,
                image,
                format!("destination `{value}` is the consumer index's own file"),
                "images/SHA256SUMS, images/SHA256SUMS.minisig and images/index.json are written by labctl; pick another key",
            );
            return None;
        }
        if value.split('/').next() == Some(crate::layout::SERVED_STATE_DIR) {
            self.error_hint(
                loc,
                image,
                format!("destination `{value}` is inside the served folder's own `.labctl/`"),
                "labctl verify --into keeps its state, lock and temporary files there on the NAS; pick another key",
            );
            return None;
        }
        match check_relative_key(&value) {
            Ok(()) => match crate::manifest::cloud_sync::check(&value) {
                None => Some(value),
                Some(rule) => {
                    self.error_hint(
                        loc,
                        image,
                        format!("destination `{value}` would never reach the NAS: {rule}"),
                        "the NAS pulls images/ with Synology Cloud Sync; pick a name it carries (docs/manifest.md lists its rules)",
                    );
                    None
                }
            },
            Err(why) => {
                self.error_hint(
                    loc,
                    image,
                    format!("destination `{value}` {why}"),
                    "a destination is an object key below `images/`, such as `talos/metal-amd64.raw`",
                );
                None
            }
        }
    }
}
