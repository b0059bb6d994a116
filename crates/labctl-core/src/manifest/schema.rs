//! Reads the located YAML tree into the manifest model, checking every rule of the manifest
//! format and collecting all problems instead of stopping at the first.

use std::collections::{BTreeMap, HashMap};

use crate::checksum::Checksum;
use crate::diagnostic::{closest, Diagnostic};
use crate::manifest::model::*;
use crate::manifest::reference;
use crate::manifest::yaml::{Key, Loc, Node, Value};

/// Where an image's bytes come from (`source:`, its checksum and signature) and where they go
/// (`destination:`).
mod source;

/// Switches that change what the rules accept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// Accept `http://` sources on loopback addresses (test servers).
    pub allow_insecure_loopback: bool,
    /// Accept `checksum: pin` and `expected: pin` (and absent checksums): `labctl pin` fills them.
    pub allow_pin: bool,
}

/// Everything the schema pass produced: the images that could be read, and the problems.
pub struct Read {
    pub name: Option<String>,
    pub store: Option<StoreConfig>,
    pub index: IndexConfig,
    pub images: Vec<Image>,
    pub diagnostics: Vec<Diagnostic>,
}

pub(super) struct Reader<'a> {
    dir: &'a dyn super::ManifestDir,
    rules: Rules,
    diags: Vec<Diagnostic>,
}

/// The mapping at one place in the document, with unknown keys already reported.
pub(super) struct Fields<'n> {
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    pub(super) fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }
}

pub fn read(root: &Node, dir: &dyn super::ManifestDir, rules: Rules) -> Read {
    let mut r = Reader {
        dir,
        rules,
        diags: Vec::new(),
    };
    let mut out = Read {
        name: None,
        store: None,
        index: IndexConfig::default(),
        images: Vec::new(),
        diagnostics: Vec::new(),
    };
    if let Some(top) = r.fields(
        root,
        "the manifest",
        &["apiVersion", "kind", "metadata", "spec"],
        None,
    ) {
        r.check_header(&top, root.loc);
        if let Some(meta) = top.get("metadata") {
            if let Some(m) = r.fields(meta, "metadata", &["name", "labels"], None) {
                out.name = m
                    .get("name")
                    .and_then(|n| r.string(n, "metadata.name", None));
            }
        }
        match top.get("spec") {
            None => r.error(root.loc, None, "missing required field `spec`"),
            Some(spec) => {
                if let Some(s) = r.fields(spec, "spec", &["store", "index", "images"], None) {
                    out.store = s.get("store").and_then(|n| r.store(n));
                    if let Some(n) = s.get("index") {
                        out.index = r.index(n);
                    }
                    match s.get("images") {
                        None => r.error(spec.loc, None, "missing required field `spec.images`"),
                        Some(images) => out.images = r.images(images),
                    }
                }
            }
        }
    }
    out.diagnostics = r.diags;
    out
}

impl Reader<'_> {
    pub(super) fn error(&mut self, loc: Loc, image: Option<&str>, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(loc, msg).image(image));
    }

    pub(super) fn error_hint(
        &mut self,
        loc: Loc,
        image: Option<&str>,
        msg: impl Into<String>,
        hint: &str,
    ) {
        self.diags.push(
            Diagnostic::new(loc, msg)
                .image(image)
                .hint(hint.to_string()),
        );
    }

    /// `node` as a mapping whose keys are all in `known`; unknown keys are reported with the
    /// closest known one, since a typo silently ignored is a setting silently lost.
    pub(super) fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
        image: Option<&str>,
    ) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            self.error(
                node.loc,
                image,
                format!("{what} must be a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        for (key, _) in entries {
            if !known.contains(&key.name.as_str()) {
                let msg = format!("unknown field `{}` in {what}", key.name);
                match closest(&key.name, known) {
                    Some(s) => {
                        self.error_hint(key.loc, image, msg, &format!("did you mean `{s}`?"))
                    }
                    None => self.error_hint(
                        key.loc,
                        image,
                        msg,
                        &format!("known fields: {}", known.join(", ")),
                    ),
                }
            }
        }
        Some(Fields { entries })
    }

    pub(super) fn string(
        &mut self,
        node: &Node,
        what: &str,
        image: Option<&str>,
    ) -> Option<String> {
        match &node.value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(
                    node.loc,
                    image,
                    format!("`{what}` must be a string, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// A required string field.
    pub(super) fn required_string(
        &mut self,
        fields: &Fields,
        parent: Loc,
        name: &str,
        what: &str,
        image: Option<&str>,
    ) -> Option<String> {
        match fields.get(name) {
            Some(node) => self.string(node, what, image),
            None => {
                self.error(parent, image, format!("missing required field `{what}`"));
                None
            }
        }
    }

    fn check_header(&mut self, top: &Fields, loc: Loc) {
        match top.get("apiVersion") {
            None => self.error_hint(
                loc,
                None,
                "missing required field `apiVersion`",
                &format!("add `apiVersion: {API_VERSION}`"),
            ),
            Some(n) => {
                if let Some(v) = self.string(n, "apiVersion", None) {
                    if v != API_VERSION {
                        self.error_hint(
                            n.loc,
                            None,
                            format!("unsupported apiVersion `{v}`"),
                            &format!("this labctl reads `{API_VERSION}`"),
                        );
                    }
                }
            }
        }
        match top.get("kind") {
            None => self.error(loc, None, format!("missing required field `kind` ({KIND})")),
            Some(n) => {
                if let Some(v) = self.string(n, "kind", None) {
                    if v != KIND {
                        self.error(n.loc, None, format!("kind must be `{KIND}`, found `{v}`"));
                    }
                }
            }
        }
    }

    fn store(&mut self, node: &Node) -> Option<StoreConfig> {
        let f = self.fields(node, "spec.store", &["s3"], None)?;
        let Some(s3) = f.get("s3") else {
            self.error(node.loc, None, "`spec.store` needs an `s3` block");
            return None;
        };
        let g = self.fields(
            s3,
            "spec.store.s3",
            &["bucket", "endpoint", "region", "prefix"],
            None,
        )?;
        let bucket = self.required_string(&g, s3.loc, "bucket", "spec.store.s3.bucket", None);
        let endpoint = g
            .get("endpoint")
            .and_then(|n| self.string(n, "spec.store.s3.endpoint", None));
        if let (Some(e), Some(n)) = (&endpoint, g.get("endpoint")) {
            if !e.starts_with("https://") && !is_loopback_http(e) {
                self.error(
                    n.loc,
                    None,
                    format!("store endpoint `{e}` must use https:// (plain http only on loopback)"),
                );
            }
        }
        let region = g
            .get("region")
            .and_then(|n| self.string(n, "spec.store.s3.region", None));
        let prefix = g
            .get("prefix")
            .and_then(|n| self.string(n, "spec.store.s3.prefix", None))
            .map(|p| p.trim_matches('/').to_string())
            .filter(|p| !p.is_empty());
        Some(StoreConfig {
            s3: S3Config {
                bucket: bucket?,
                endpoint,
                region,
                prefix,
            },
        })
    }

    /// `spec.index: {signing: {minisign: {publicKey: RW…}}}`.
    fn index(&mut self, node: &Node) -> IndexConfig {
        let mut config = IndexConfig::default();
        let Some(f) = self.fields(node, "spec.index", &["signing"], None) else {
            return config;
        };
        let Some(signing) = f.get("signing") else {
            return config;
        };
        let Some(g) = self.fields(signing, "spec.index.signing", &["minisign"], None) else {
            return config;
        };
        let Some(minisign) = g.get("minisign") else {
            self.error(
                signing.loc,
                None,
                "`spec.index.signing` needs a `minisign` block",
            );
            return config;
        };
        let Some(m) = self.fields(
            minisign,
            "spec.index.signing.minisign",
            &["publicKey"],
            None,
        ) else {
            return config;
        };
        let Some(key_node) = m.get("publicKey") else {
            self.error_hint(
                minisign.loc,
                None,
                "missing required field `spec.index.signing.minisign.publicKey`",
                "the public key is the second line of the `.pub` file `minisign -G` writes (RW…)",
            );
            return config;
        };
        let Some(key) = self.string(key_node, "spec.index.signing.minisign.publicKey", None) else {
            return config;
        };
        match crate::signature::MinisignKey::parse(&key) {
            Ok(_) => config.minisign_public_key = Some(key.trim().to_string()),
            Err(e) => self.error_hint(
                key_node.loc,
                None,
                e.to_string(),
                "the public key is the second line of the `.pub` file `minisign -G` writes (RW…)",
            ),
        }
        config
    }

    fn images(&mut self, node: &Node) -> Vec<Image> {
        let Value::Seq(items) = &node.value else {
            self.error(
                node.loc,
                None,
                format!("`spec.images` must be a list, found {}", node.value.kind()),
            );
            return Vec::new();
        };
        // `{{ version }}` is written into each image's fields first, so that every rule below
        // (unique names and keys, HTTPS, references) judges what the image really says.
        let expanded: Vec<Node> = items.iter().map(|item| self.expand_version(item)).collect();
        // Sized once: the images live as long as the manifest (a doubled Vec of 10,000 images
        // would keep 3 MB it never uses).
        let mut images = Vec::with_capacity(items.len());
        for (written, item) in items.iter().zip(&expanded) {
            if let Some(image) = self.image(item, written) {
                images.push(image);
            }
        }
        self.check_unique(&expanded);
        // Every name the manifest declares, including images with problems of their own: a
        // dependency on one of those is not also "not an image in this manifest".
        let declared: Vec<String> = expanded.iter().filter_map(declared_name).collect();
        self.check_references(&images, &declared);
        images
    }

    /// `node` is the image with its version written in; `written` is it as the file has it.
    ///
    /// Long on purpose: one step per field of an image, in the order docs/manifest.md lists
    /// them, every problem collected rather than the first returned.
    fn image(&mut self, node: &Node, written: &Node) -> Option<Image> {
        const FIELDS: [&str; 9] = [
            "name",
            "version",
            "source",
            "destination",
            "validation",
            "dependsOn",
            "protect",
            "history",
            "track",
        ];
        // Read the name first so that every other problem can say which image it is about.
        let name = declared_name(node);
        let label = name.as_deref();
        let f = self.fields(node, "an image", &FIELDS, label)?;
        let name_ok = match f.get("name") {
            None => {
                self.error(node.loc, None, "image has no `name`");
                false
            }
            Some(n) => match &name {
                None => {
                    self.error(
                        n.loc,
                        None,
                        format!("image `name` must be a string, found {}", n.value.kind()),
                    );
                    false
                }
                Some(s) if !valid_name(s) => {
                    self.error_hint(
                        n.loc,
                        label,
                        "invalid image name",
                        "names start with a letter or digit and use only letters, digits, `.`, `_` and `-`",
                    );
                    false
                }
                Some(_) => true,
            },
        };

        let source = match f.get("source") {
            None => {
                self.error(node.loc, label, "missing required field `source`");
                None
            }
            Some(s) => self.source(s, label),
        };
        let destination = match f.get("destination") {
            None => {
                self.error(node.loc, label, "missing required field `destination`");
                None
            }
            Some(d) => self.destination(d, label),
        };
        let expected = f
            .get("validation")
            .and_then(|v| self.validation(v, label))
            .flatten();
        let depends_on = f
            .get("dependsOn")
            .map(|d| self.depends_on(d, label))
            .unwrap_or_default();
        let protect = match f.get("protect") {
            None => false,
            Some(Node {
                value: Value::Bool(b),
                ..
            }) => *b,
            Some(other) => {
                self.error(
                    other.loc,
                    label,
                    format!(
                        "`protect` must be true or false, found {}",
                        other.value.kind()
                    ),
                );
                false
            }
        };

        let history = match f.get("history") {
            None => 0,
            Some(n) => match &n.value {
                Value::Number(text) => match text.parse::<u32>() {
                    Ok(v) if v <= MAX_HISTORY => v,
                    _ => {
                        self.error_hint(
                            n.loc,
                            label,
                            format!("`history` must be a whole number from 0 to {MAX_HISTORY}, found {text}"),
                            "history: N keeps the N most recent earlier versions of the object",
                        );
                        0
                    }
                },
                other => {
                    self.error(
                        n.loc,
                        label,
                        format!(
                            "`history` must be a whole number from 0 to {MAX_HISTORY}, found {}",
                            other.kind()
                        ),
                    );
                    0
                }
            },
        };

        // Judged from the raw entry, so it is reported even when the source has other problems.
        let source_node = f.get("source");
        let source_field = |name: &str| match source_node.map(|n| &n.value) {
            Some(Value::Map(entries)) => {
                entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v)
            }
            _ => None,
        };
        let is_packer = matches!(source_field("type").map(|n| &n.value), Some(Value::String(t)) if t == "packer");
        if source_field("decompress").is_some()
            && !is_packer
            && expected.is_none()
            && !self.rules.allow_pin
        {
            self.error_hint(
                source_node.map(|n| n.loc).unwrap_or(node.loc),
                label,
                "`validation.expected` is required when `decompress` is set",
                "add `validation: {expected: sha256:<hex of the decompressed bytes>}` so the published bytes are verified",
            );
        }
        if is_packer && expected.is_some() {
            self.error_hint(
                f.get("validation").map(|n| n.loc).unwrap_or(node.loc),
                label,
                "`validation.expected` is not supported for packer images",
                "a build's output checksum is known only after apply; remove the `validation` block",
            );
        }
        let version = self.version(&f, label);
        let track = match f.get("track") {
            None => Ok(None),
            Some(t) => self
                .track(t, written, version.as_deref(), source.as_ref(), label)
                .map(Some)
                .ok_or(()),
        };
        let source = source?;
        if !name_ok {
            return None;
        }
        Some(Image {
            name: name?,
            loc: node.loc,
            source,
            destination: destination?,
            expected,
            depends_on,
            protect,
            history,
            version,
            track: track.ok()?,
        })
    }

    /// `Some(None)` for a valid block without `expected`.
    fn validation(&mut self, node: &Node, image: Option<&str>) -> Option<Option<Checksum>> {
        let f = self.fields(node, "validation", &["expected"], image)?;
        let Some(n) = f.get("expected") else {
            return Some(None);
        };
        let s = self.string(n, "validation.expected", image)?;
        if s == "pin" {
            if self.rules.allow_pin {
                return Some(None);
            }
            self.error_hint(
                n.loc,
                image,
                "`validation.expected` is still `pin`",
                "run `labctl pin --write` to compute the checksum of the published bytes",
            );
            return None;
        }
        match s.parse::<Checksum>() {
            Ok(c) => Some(Some(c)),
            Err(e) => {
                self.error(n.loc, image, format!("`validation.expected`: {e}"));
                None
            }
        }
    }

    fn depends_on(&mut self, node: &Node, image: Option<&str>) -> Vec<String> {
        let Value::Seq(items) = &node.value else {
            self.error(
                node.loc,
                image,
                format!(
                    "`dependsOn` must be a list of image names, found {}",
                    node.value.kind()
                ),
            );
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|n| self.string(n, "dependsOn entry", image))
            .collect()
    }

    /// Names and destinations must be unique. Checked on the raw entries, so that an entry with
    /// other problems still counts.
    fn check_unique(&mut self, items: &[Node]) {
        let mut names: HashMap<String, Loc> = HashMap::new();
        let mut destinations: HashMap<String, (Option<String>, Loc)> = HashMap::new();
        for item in items {
            let Value::Map(entries) = &item.value else {
                continue;
            };
            let field = |name: &str| entries.iter().find(|(k, _)| k.name == name).map(|(_, v)| v);
            let name = match field("name").map(|n| &n.value) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            };
            let destination = match field("destination").map(|n| &n.value) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Map(m)) => {
                    m.iter()
                        .find(|(k, _)| k.name == "path")
                        .and_then(|(_, v)| match &v.value {
                            Value::String(s) => Some(s.clone()),
                            _ => None,
                        })
                }
                _ => None,
            };
            if let Some(n) = &name {
                match names.get(n) {
                    Some(first) => self.error(
                        item.loc,
                        name.as_deref(),
                        format!("duplicate image name (first defined at {first})"),
                    ),
                    None => {
                        names.insert(n.clone(), item.loc);
                    }
                }
            }
            if let Some(d) = destination {
                match destinations.get(&d) {
                    Some((other, first)) => self.error_hint(
                        item.loc,
                        name.as_deref(),
                        format!(
                            "destination `{d}` is also the destination of image `{}` ({first})",
                            other.as_deref().unwrap_or("?")
                        ),
                        "each image needs its own object key",
                    ),
                    None => {
                        destinations.insert(d, (name.clone(), item.loc));
                    }
                }
            }
        }
    }

    fn check_references(&mut self, images: &[Image], declared: &[String]) {
        let names: Vec<&str> = declared.iter().map(String::as_str).collect();
        let mut found = Vec::new();
        for image in images {
            let mentioned = image
                .depends_on
                .iter()
                .map(|d| (d.clone(), "dependsOn"))
                .chain(
                    image
                        .references()
                        .into_iter()
                        .map(|r| (r.image, "a reference")),
                );
            for (dep, via) in mentioned {
                if dep == image.name {
                    found.push(
                        Diagnostic::new(image.loc, format!("{via} names the image itself"))
                            .image(Some(&image.name)),
                    );
                } else if !names.contains(&dep.as_str()) {
                    let mut d = Diagnostic::new(
                        image.loc,
                        format!("{via} names `{dep}`, which is not an image in this manifest"),
                    )
                    .image(Some(&image.name));
                    let others: Vec<&str> =
                        names.iter().copied().filter(|n| *n != image.name).collect();
                    if let Some(s) = closest(&dep, &others) {
                        d = d.hint(format!("did you mean `{s}`?"));
                    }
                    found.push(d);
                }
            }
        }
        self.diags.extend(found);
    }
}

/// The `name` an image entry declares, if it is a string, whatever else is wrong with it.
pub(super) fn declared_name(node: &Node) -> Option<String> {
    let Value::Map(entries) = &node.value else {
        return None;
    };
    entries
        .iter()
        .find(|(k, _)| k.name == "name")
        .and_then(|(_, v)| match &v.value {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
}

pub(super) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Object keys and artifact paths: relative, no `..`, no empty segments.
/// Public key files are small; reading stops here (a pull request could name `/dev/zero`).
pub const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

pub use crate::layout::check_relative_key;

/// `http://127.x.x.x…`, `http://localhost…` or `http://[::1]…`.
pub fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("HTTP://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_keys() {
        assert!(check_relative_key("talos/a.raw").is_ok());
        assert!(check_relative_key("/abs").is_err());
        assert!(check_relative_key("a//b").is_err());
        assert!(check_relative_key("a/../b").is_err());
        assert!(check_relative_key("a/").is_err());
        assert!(check_relative_key("").is_err());
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_http("http://127.0.0.1:8080/a"));
        assert!(is_loopback_http("http://localhost/a"));
        assert!(is_loopback_http("http://[::1]:9/a"));
        assert!(!is_loopback_http("http://10.0.0.1/a"));
        assert!(!is_loopback_http("http://127.0.0.1.evil.com/a"));
        assert!(!is_loopback_http("https://127.0.0.1/a"));
    }

    #[test]
    fn names() {
        assert!(valid_name("talos-1.9.1-metal-amd64"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(""));
    }
}
