//! `{{ version }}` in an image's fields: the version is written once, in the image's
//! `version:`, and every field that carries it (URL, signature URL, checksum list, destination,
//! name) says so. A bump then edits one field.

use std::fmt;

/// What a placeholder may say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// The version as written (`v1.9.1`).
    Version,
    /// Without a leading `v` (`1.9.1`): names and keys often drop it.
    Bare,
}

impl Placeholder {
    fn from_expr(expr: &str) -> Option<Placeholder> {
        match expr {
            "version" => Some(Placeholder::Version),
            "version.bare" => Some(Placeholder::Bare),
            _ => None,
        }
    }

    fn render(self, version: &str) -> &str {
        match self {
            Placeholder::Version => version,
            Placeholder::Bare => version.strip_prefix(['v', 'V']).unwrap_or(version),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{{{{ version }}}}` is used, but the image has no `version`")]
    NoVersion,
    #[error("unknown placeholder `{{{{ {0} }}}}`; expected `{{{{ version }}}}` or `{{{{ version.bare }}}}`")]
    Unknown(String),
}

/// Whether `text` holds a version placeholder (references to other images are left alone).
pub fn mentions_version(text: &str) -> bool {
    placeholders(text).any(|(_, _, expr)| expr.starts_with("version"))
}

/// `text` with its version placeholders replaced by `version` (`None`: the image has none).
/// `{{ images.… }}` references are not this module's: they are left as written.
pub fn expand(text: &str, version: Option<&str>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, expr) in placeholders(text) {
        if expr.starts_with("images.") || !expr.starts_with("version") {
            continue;
        }
        let placeholder =
            Placeholder::from_expr(expr).ok_or_else(|| TemplateError::Unknown(expr.into()))?;
        let version = version.ok_or(TemplateError::NoVersion)?;
        out.push_str(&text[last..start]);
        out.push_str(placeholder.render(version));
        last = end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

/// `(start, end, trimmed expression)` of every `{{ … }}` in `text`.
fn placeholders(text: &str) -> impl Iterator<Item = (usize, usize, &str)> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = from + text.get(from..)?.find("{{")?;
        let len = text[start + 2..].find("}}")?;
        let end = start + 2 + len + 2;
        from = end;
        Some((start, end, text[start + 2..end - 2].trim()))
    })
}

/// Whether `version` can be written into URLs, keys and names as it is.
pub fn check_version_text(version: &str) -> Result<(), VersionTextError> {
    if version.is_empty() || version.len() > 128 {
        return Err(VersionTextError {
            version: version.into(),
        });
    }
    if !version
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
        || !version.as_bytes()[0].is_ascii_alphanumeric()
    {
        return Err(VersionTextError {
            version: version.into(),
        });
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionTextError {
    pub version: String,
}

impl fmt::Display for VersionTextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`version` `{}` cannot be written into URLs and keys: use 1 to 128 letters, digits, `.`, `-`, `_` or `+`, starting with a letter or digit",
            self.version
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_version_placeholders_only() {
        let url = "https://f/image/abc/{{ version }}/metal-amd64.raw.zst";
        assert_eq!(
            expand(url, Some("v1.9.1")).unwrap(),
            "https://f/image/abc/v1.9.1/metal-amd64.raw.zst"
        );
        assert_eq!(
            expand("talos-{{version.bare}}-metal", Some("v1.9.1")).unwrap(),
            "talos-1.9.1-metal"
        );
        assert_eq!(
            expand("{{ images.iso.url }}?v={{ version }}", Some("2")).unwrap(),
            "{{ images.iso.url }}?v=2"
        );
        assert_eq!(expand("no placeholders", None).unwrap(), "no placeholders");
        assert_eq!(expand("{{ version }}", None), Err(TemplateError::NoVersion));
        assert_eq!(
            expand("{{ version.major }}", Some("v1")),
            Err(TemplateError::Unknown("version.major".into()))
        );
        // An unterminated `{{` is left for the field's own checks.
        assert_eq!(expand("a{{ version", Some("v1")).unwrap(), "a{{ version");
        assert!(mentions_version("x/{{ version }}/y"));
        assert!(!mentions_version("{{ images.a.url }}"));
    }

    #[test]
    fn versions_that_fit_in_urls_and_keys() {
        for ok in [
            "v1.9.1",
            "2025.01.06-0020-rolling",
            "1.5-rolling-202501060020",
            "v1.10.0+b",
        ] {
            assert!(check_version_text(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-v1", "v1/2", "v1 2", "../x", "v1?x", &"9".repeat(129)] {
            assert!(check_version_text(bad).is_err(), "{bad}");
        }
    }
}
