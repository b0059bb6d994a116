//! `{{ images.NAME.field }}` references in Packer variables.
//!
//! A reference is resolved at apply time to a fact about another image that labctl publishes, and
//! it makes that image a dependency.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    /// Where the published object can be fetched from.
    Url,
    Checksum,
    Key,
    Size,
}

impl Field {
    pub const NAMES: [&'static str; 4] = ["url", "checksum", "key", "size"];

    fn from_name(s: &str) -> Option<Field> {
        match s {
            "url" => Some(Field::Url),
            "checksum" => Some(Field::Checksum),
            "key" => Some(Field::Key),
            "size" => Some(Field::Size),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        Field::NAMES[self as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub image: String,
    pub field: Field,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{{ images.{}.{} }}}}", self.image, self.field.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unterminated `{{{{` in `{0}`")]
    Unterminated(String),
    #[error("`{{{{ {0} }}}}` is not a reference; expected `{{{{ images.NAME.FIELD }}}}`")]
    NotAnImageReference(String),
    #[error(
        "unknown field `{field}` in `{{{{ {expr} }}}}`; expected one of url, checksum, key, size"
    )]
    UnknownField { expr: String, field: String },
}

/// Every reference in `text`, in order.
pub fn parse_all(text: &str) -> Result<Vec<Reference>, ReferenceError> {
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| ReferenceError::Unterminated(text.to_string()))?;
        let expr = after[..end].trim();
        refs.push(parse_expr(expr)?);
        rest = &after[end + 2..];
    }
    Ok(refs)
}

/// Replaces every reference in `text` using `value_of`.
pub fn substitute(
    text: &str,
    mut value_of: impl FnMut(&Reference) -> String,
) -> Result<String, ReferenceError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| ReferenceError::Unterminated(text.to_string()))?;
        out.push_str(&value_of(&parse_expr(after[..end].trim())?));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_expr(expr: &str) -> Result<Reference, ReferenceError> {
    // Image names may contain dots (`talos-1.9.1-metal-amd64`), so the field is the last segment
    // and the name is everything between `images.` and it.
    let inner = expr
        .strip_prefix("images.")
        .ok_or_else(|| ReferenceError::NotAnImageReference(expr.to_string()))?;
    let (image, field) = inner
        .rsplit_once('.')
        .ok_or_else(|| ReferenceError::NotAnImageReference(expr.to_string()))?;
    if image.is_empty() {
        return Err(ReferenceError::NotAnImageReference(expr.to_string()));
    }
    let field = Field::from_name(field).ok_or_else(|| ReferenceError::UnknownField {
        expr: expr.to_string(),
        field: field.to_string(),
    })?;
    Ok(Reference {
        image: image.to_string(),
        field,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_dots() {
        let refs = parse_all("x {{ images.talos-1.9.1.url }} y {{images.b.checksum}}").unwrap();
        assert_eq!(
            refs,
            vec![
                Reference {
                    image: "talos-1.9.1".into(),
                    field: Field::Url
                },
                Reference {
                    image: "b".into(),
                    field: Field::Checksum
                }
            ]
        );
    }

    #[test]
    fn plain_text_has_no_references() {
        assert!(parse_all("https://example.com/a.iso").unwrap().is_empty());
    }

    #[test]
    fn rejects_malformed_references() {
        assert!(matches!(
            parse_all("{{ images.a.url"),
            Err(ReferenceError::Unterminated(_))
        ));
        assert!(matches!(
            parse_all("{{ env.HOME }}"),
            Err(ReferenceError::NotAnImageReference(_))
        ));
        assert!(matches!(
            parse_all("{{ images.a.sha }}"),
            Err(ReferenceError::UnknownField { .. })
        ));
        assert!(matches!(
            parse_all("{{ images.url }}"),
            Err(ReferenceError::NotAnImageReference(_))
        ));
    }

    #[test]
    fn substitutes_values() {
        let out = substitute("iso={{ images.a.url }}&k={{ images.a.key }}", |r| {
            format!("<{}:{}>", r.image, r.field.name())
        })
        .unwrap();
        assert_eq!(out, "iso=<a:url>&k=<a:key>");
    }
}
