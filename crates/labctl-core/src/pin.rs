//! `labctl pin`: writing computed checksums into the manifest, changing nothing else.
//!
//! Edits are made on the file's text at the byte spans the YAML parser reported, so comments,
//! key order, quoting and indentation everywhere else stay exactly as they were.

use crate::checksum::Checksum;
use crate::manifest::yaml::{Key, Node, Value};

/// What to write for one image.
#[derive(Debug, Clone)]
pub struct Pinned {
    pub image: String,
    /// A new `version:` (`labctl bump`); the fields that say `{{ version }}` follow it.
    pub version: Option<String>,
    /// The download's checksum, when `source.checksum` is absent or `pin`.
    pub checksum: Option<Checksum>,
    /// The published bytes' checksum, when `validation.expected` is absent or `pin`.
    pub expected: Option<Checksum>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("image `{0}` is not in the manifest")]
    NoImage(String),
    #[error("image `{image}`: cannot locate `{what}` in the file")]
    NotLocated { image: String, what: &'static str },
}

struct Edit {
    at: usize,
    remove: usize,
    insert: String,
}

fn entry<'a>(node: &'a Node, name: &str) -> Option<&'a (Key, Node)> {
    match &node.value {
        Value::Map(entries) => entries.iter().find(|(k, _)| k.name == name),
        _ => None,
    }
}

fn images(root: &Node) -> &[Node] {
    match entry(root, "spec").and_then(|(_, spec)| entry(spec, "images")) {
        Some((
            _,
            Node {
                value: Value::Seq(items),
                ..
            },
        )) => items,
        _ => &[],
    }
}

/// Inserts `text` (`key: value`) as a sibling just before `key`: on its own line with the same
/// indentation when the key starts its line (block style), else inline before it (flow style).
fn insert_before(source: &str, key: &Key, text: &str) -> Option<Edit> {
    let (at, _) = key.span?;
    let line_start = source[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let before = &source[line_start..at];
    if before.trim().is_empty() {
        Some(Edit {
            at: line_start,
            remove: 0,
            insert: format!("{before}{text}\n"),
        })
    } else if before.trim_end().ends_with("- ") || before.trim() == "-" {
        // `- key: …` opens a sequence item: the sibling goes on the next line, under `key`.
        let indent = " ".repeat(at - line_start);
        let line_end = source[at..]
            .find('\n')
            .map(|i| at + i + 1)
            .unwrap_or(source.len());
        Some(Edit {
            at: line_end,
            remove: 0,
            insert: format!("{indent}{text}\n"),
        })
    } else {
        Some(Edit {
            at,
            remove: 0,
            insert: format!("{text}, "),
        })
    }
}

fn replace(source: &str, node: &Node, value: &str) -> Option<Edit> {
    let (at, len) = node.span?;
    let current = &source[at..at + len];
    // Keep the quoting the user chose.
    let quoted = current.starts_with('"') || current.starts_with('\'');
    let insert = if quoted {
        format!("{}{value}{}", &current[..1], &current[..1])
    } else {
        value.to_string()
    };
    Some(Edit {
        at,
        remove: len,
        insert,
    })
}

/// The image's name as the manifest means it: with its `{{ version }}` written in.
fn declared_name(image: &Node) -> Option<String> {
    let text = |node: Option<&(Key, Node)>| match node {
        Some((
            _,
            Node {
                value: Value::String(s),
                ..
            },
        )) => Some(s.clone()),
        _ => None,
    };
    let name = text(entry(image, "name"))?;
    let version = text(entry(image, "version"));
    crate::upstream::template::expand(&name, version.as_deref()).ok()
}

/// Returns `source` with the pinned values written in.
pub fn apply(source: &str, root: &Node, pins: &[Pinned]) -> Result<String, EditError> {
    let mut edits = Vec::new();
    for pin in pins {
        let image = images(root)
            .iter()
            .find(|i| declared_name(i).as_deref() == Some(pin.image.as_str()))
            .ok_or_else(|| EditError::NoImage(pin.image.clone()))?;
        let located = |what| EditError::NotLocated {
            image: pin.image.clone(),
            what,
        };
        if let Some(version) = &pin.version {
            let (_, node) = entry(image, "version").ok_or_else(|| located("version"))?;
            edits.push(replace(source, node, version).ok_or_else(|| located("version"))?);
        }
        if let Some(sum) = &pin.checksum {
            let (_, source_node) = entry(image, "source").ok_or_else(|| located("source"))?;
            let edit = match entry(source_node, "checksum") {
                Some((_, value)) => replace(source, value, &sum.to_string()),
                None => {
                    let (url_key, _) =
                        entry(source_node, "url").ok_or_else(|| located("source.url"))?;
                    insert_before(source, url_key, &format!("checksum: {sum}"))
                }
            };
            edits.push(edit.ok_or_else(|| located("source.checksum"))?);
        }
        if let Some(sum) = &pin.expected {
            let edit = match entry(image, "validation") {
                Some((_, validation)) => match entry(validation, "expected") {
                    Some((_, value)) => replace(source, value, &sum.to_string()),
                    None => None,
                },
                None => {
                    let (dest_key, _) =
                        entry(image, "destination").ok_or_else(|| located("destination"))?;
                    insert_before(
                        source,
                        dest_key,
                        &format!("validation: {{expected: {sum}}}"),
                    )
                }
            };
            edits.push(edit.ok_or_else(|| located("validation.expected"))?);
        }
    }
    // Apply from the end so earlier offsets stay valid.
    edits.sort_by_key(|e| std::cmp::Reverse(e.at));
    let mut out = source.to_string();
    for e in edits {
        out.replace_range(e.at..e.at + e.remove, &e.insert);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::yaml;

    const MANIFEST: &str = r#"# The lab's images.
apiVersion: labctl/v1alpha1
kind: ImageManifest
spec:
  images:
    # Talos: the factory publishes no checksums, so pin on first use.
    - name: talos
      source:
        type: http
        url: https://factory.talos.dev/image/x/v1.9.1/metal-amd64.raw.zst   # stable per version
        checksum: pin        # filled in by `labctl pin --write`
        decompress: zstd
      destination: talos/metal-amd64.raw
      validation:
        expected: "pin"
    - name: flow
      source: {type: http, url: "https://e/flow.iso"}
      destination: flow.iso
    - {name: inline, source: {type: http, url: "https://e/i.img.xz", decompress: xz}, destination: i.img}
"#;

    fn sum(s: &str) -> Checksum {
        Checksum::sha256(s.as_bytes())
    }

    #[test]
    fn writes_only_the_pinned_values() {
        let root = yaml::parse(MANIFEST).unwrap();
        let out = apply(
            MANIFEST,
            &root,
            &[
                Pinned {
                    version: None,
                    image: "talos".into(),
                    checksum: Some(sum("src")),
                    expected: Some(sum("out")),
                },
                Pinned {
                    version: None,
                    image: "flow".into(),
                    checksum: Some(sum("flow")),
                    expected: None,
                },
                Pinned {
                    version: None,
                    image: "inline".into(),
                    checksum: Some(sum("i")),
                    expected: Some(sum("io")),
                },
            ],
        )
        .unwrap();
        assert!(
            out.contains(&format!(
                "        checksum: {}        # filled in by `labctl pin --write`\n",
                sum("src")
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!("        expected: \"{}\"\n", sum("out"))),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "source: {{type: http, checksum: {}, url: \"https://e/flow.iso\"}}",
                sum("flow")
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "validation: {{expected: {}}}, destination: i.img}}",
                sum("io")
            )),
            "{out}"
        );
        // Everything else is byte for byte the same: removing the inserted values gives the
        // original back.
        let restored = out
            .replace(&sum("src").to_string(), "pin")
            .replace(&sum("out").to_string(), "pin")
            .replace(&format!("checksum: {}, ", sum("flow")), "")
            .replace(&format!("checksum: {}, ", sum("i")), "")
            .replace(&format!("validation: {{expected: {}}}, ", sum("io")), "");
        assert_eq!(restored, MANIFEST);
        // And the result is a valid manifest.
        let (m, _) = crate::manifest::parse(
            out.as_bytes(),
            std::path::Path::new("m.yaml"),
            std::path::Path::new("."),
            &crate::manifest::NoFiles,
            Default::default(),
        )
        .unwrap();
        assert_eq!(m.images.len(), 3);
    }

    #[test]
    fn block_items_get_new_lines_at_the_right_indentation() {
        let text = "spec:\n  images:\n    - name: a\n      source:\n        type: http\n        url: https://e/a.xz\n        decompress: xz\n      destination: a.img\n";
        let root = yaml::parse(text).unwrap();
        let out = apply(
            text,
            &root,
            &[Pinned {
                version: None,
                image: "a".into(),
                checksum: Some(sum("a")),
                expected: Some(sum("b")),
            }],
        )
        .unwrap();
        assert_eq!(
            out,
            format!("spec:\n  images:\n    - name: a\n      source:\n        type: http\n        checksum: {}\n        url: https://e/a.xz\n        decompress: xz\n      validation: {{expected: {}}}\n      destination: a.img\n", sum("a"), sum("b"))
        );
    }

    #[test]
    fn a_bump_writes_the_version_and_both_digests_and_nothing_else() {
        let text = r#"spec:
  images:
    # Talos from the factory.
    - name: talos-{{ version.bare }}-metal   # the name follows the version
      version: "v1.9.1"   # bumped by `labctl bump`
      track: {channel: talos}
      source:
        type: http
        url: https://f.example/image/abc/{{ version }}/metal-amd64.raw.zst
        checksum: sha256:0000000000000000000000000000000000000000000000000000000000000001
        decompress: zstd
      destination: talos/{{ version }}/metal-amd64.raw
      validation:
        expected: sha256:0000000000000000000000000000000000000000000000000000000000000002 # pinned
"#;
        let root = yaml::parse(text).unwrap();
        let out = apply(
            text,
            &root,
            &[Pinned {
                image: "talos-1.9.1-metal".into(),
                version: Some("v1.10.2".into()),
                checksum: Some(sum("src")),
                expected: Some(sum("out")),
            }],
        )
        .unwrap();
        let expected = text
            .replace("\"v1.9.1\"", "\"v1.10.2\"")
            .replace(
                "sha256:0000000000000000000000000000000000000000000000000000000000000001",
                &sum("src").to_string(),
            )
            .replace(
                "sha256:0000000000000000000000000000000000000000000000000000000000000002",
                &sum("out").to_string(),
            );
        assert_eq!(out, expected);
        // The templated name is matched as the manifest means it, not as written.
        let err = apply(
            text,
            &root,
            &[Pinned {
                image: "talos-{{ version.bare }}-metal".into(),
                version: Some("v2".into()),
                checksum: None,
                expected: None,
            }],
        )
        .unwrap_err();
        assert!(matches!(err, EditError::NoImage(_)));
    }

    #[test]
    fn unknown_images_are_reported() {
        let root = yaml::parse(MANIFEST).unwrap();
        let err = apply(
            MANIFEST,
            &root,
            &[Pinned {
                version: None,
                image: "nope".into(),
                checksum: None,
                expected: None,
            }],
        )
        .unwrap_err();
        assert_eq!(err, EditError::NoImage("nope".into()));
    }
}
