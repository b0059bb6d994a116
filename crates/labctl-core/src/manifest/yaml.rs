//! A YAML document as a tree of located nodes.
//!
//! The manifest is first read into this loose tree so that validation can report every problem in
//! one run, each with its line and column, instead of stopping at serde's first error. The parser's
//! budgets (alias expansion, nesting depth, node count) keep hostile input from exhausting memory
//! or the stack.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, Options, Spanned};

pub use crate::diagnostic::Loc;

impl Loc {
    fn span_of<T>(s: &Spanned<T>) -> Option<(usize, usize)> {
        let span = s.referenced.span();
        Some((span.byte_offset()? as usize, span.byte_len()? as usize))
    }

    fn from_spanned<T>(s: &Spanned<T>) -> Loc {
        Loc {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }

    pub fn is_known(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node with where it was written.
#[derive(Debug, Clone)]
pub struct Node {
    pub loc: Loc,
    /// Byte offset and length of the node's text (for editing the file in place).
    pub span: Option<(usize, usize)>,
    pub value: Value,
    /// A number's or boolean's text exactly as written (`1.10`, `0x1F`, `yes`): what a user
    /// means when the value is handed on as text, e.g. to Packer.
    pub raw: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number as the parser read it (`1.10` reads as `1.1`; [`Node::raw`] keeps the text).
    Number(String),
    String(String),
    Seq(Vec<Node>),
    /// Keys in document order; duplicate keys are rejected by the parser.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub loc: Loc,
    pub span: Option<(usize, usize)>,
    pub name: String,
}

impl Value {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parses `text` into a located tree, within resource budgets.
pub fn parse(text: &str) -> Result<Node, (Loc, String)> {
    let mut budget = Budget::default();
    // A manifest is a few hundred nodes; these caps are generous for real files and make alias
    // bombs and pathological nesting fail fast with a clear message.
    budget.max_depth = 64;
    budget.max_aliases = 1_000;
    budget.max_nodes = 200_000;
    budget.max_events = 1_000_000;
    let mut options = Options::default();
    options.budget = Some(budget);
    let parsed: Result<Spanned<RawNode>, serde_saphyr::Error> =
        serde_saphyr::from_str_with_options(text, options);
    match parsed {
        Ok(spanned) => {
            let mut node = spanned_to_node(spanned);
            keep_raw_scalars(&mut node, text);
            Ok(node)
        }
        Err(err) => {
            let loc = err
                .location()
                .map(|l| Loc {
                    line: l.line(),
                    column: l.column(),
                })
                .unwrap_or_default();
            Err((loc, first_line(&err)))
        }
    }
}

/// Fills in [`Node::raw`] for numbers and booleans from their spans in `text`.
fn keep_raw_scalars(node: &mut Node, text: &str) {
    match &mut node.value {
        Value::Number(_) | Value::Bool(_) => {
            node.raw = node
                .span
                .and_then(|(start, len)| text.get(start..start.checked_add(len)?))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
        }
        Value::Seq(items) => items.iter_mut().for_each(|n| keep_raw_scalars(n, text)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, n)| keep_raw_scalars(n, text)),
        Value::Null | Value::String(_) => {}
    }
}

fn first_line(err: &serde_saphyr::Error) -> String {
    // The crate's Display may append a source snippet; callers print their own location.
    let text = err.to_string();
    let mut line = text.lines().next().unwrap_or("invalid YAML").trim();
    line = line.strip_prefix("error: ").unwrap_or(line);
    // "line 1 column 4: unclosed bracket" → "unclosed bracket": the location is printed apart.
    if let Some(rest) = line.strip_prefix("line ") {
        if let Some((_, msg)) = rest.split_once(": ") {
            line = msg;
        }
    }
    // Drop a trailing " at line X column Y" the crate may add: the location is printed separately.
    let line = match line.find(" at line ") {
        Some(i) => &line[..i],
        None => line,
    };
    in_manifest_terms(line)
}

/// The parser speaks to programmers ("set DuplicateKeyPolicy in Options"); a manifest's author
/// gets what is wrong with the file.
fn in_manifest_terms(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("duplicate mapping key") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or("")
            .trim_start_matches(':')
            .trim();
        return if key.is_empty() {
            "a key appears twice in the same mapping".into()
        } else {
            format!("the key `{key}` appears twice in the same mapping")
        };
    }
    if message.contains("recursive references require weak recursion types") {
        return "an alias refers to the node that contains it (a recursive reference)".into();
    }
    message.to_string()
}

fn spanned_to_node(s: Spanned<RawNode>) -> Node {
    let loc = Loc::from_spanned(&s);
    let span = Loc::span_of(&s);
    Node {
        loc,
        span,
        value: s.value.0,
        raw: None,
    }
}

/// The deserialization target: a value whose children carry their own spans.
struct RawNode(Value);

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor).map(RawNode)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.to_string()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Number(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Number(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: de::Error>(self, _v: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values are not supported"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(spanned_to_node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<RawNode>>()? {
            let key_loc = Loc::from_spanned(&key);
            let key_span = Loc::span_of(&key);
            let name = match key.value.0 {
                Value::String(s) => s,
                Value::Number(n) => n,
                Value::Bool(b) => b.to_string(),
                Value::Null => "null".to_string(),
                other => {
                    return Err(de::Error::custom(format!(
                        "mapping keys must be scalars, found {}",
                        other.kind()
                    )))
                }
            };
            let value = map.next_value::<Spanned<RawNode>>()?;
            entries.push((
                Key {
                    loc: key_loc,
                    span: key_span,
                    name,
                },
                spanned_to_node(value),
            ));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_jargon_becomes_what_is_wrong_with_the_file() {
        let (_, dup) = parse("a: 1\na: 2\n").unwrap_err();
        assert!(dup.contains("appears twice"), "{dup}");
        assert!(!dup.contains("DuplicateKeyPolicy"), "{dup}");
        let (_, rec) = parse("a: &x\n  b: *x\n").unwrap_err();
        assert!(rec.contains("recursive reference"), "{rec}");
    }

    #[test]
    fn nodes_carry_locations() {
        let node = parse("a:\n  b: [1, two]\n  c: {d: true}\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!("expected a map")
        };
        assert_eq!(entries[0].0.name, "a");
        assert_eq!(entries[0].0.loc, Loc { line: 1, column: 1 });
        let Value::Map(inner) = &entries[0].1.value else {
            panic!()
        };
        assert_eq!(inner[0].0.loc, Loc { line: 2, column: 3 });
        let Value::Seq(items) = &inner[0].1.value else {
            panic!()
        };
        assert!(matches!(&items[1].value, Value::String(s) if s == "two"));
        assert_eq!(
            items[1].loc,
            Loc {
                line: 2,
                column: 10
            }
        );
        assert_eq!(inner[1].0.name, "c");
    }

    #[test]
    fn scalars_and_keys_have_byte_spans() {
        let text = "a:\n  url: https://x/y\n  checksum: \"pin\"\n  flow: {k: v}\n";
        let node = parse(text).unwrap();
        let Value::Map(entries) = &node.value else {
            panic!()
        };
        let Value::Map(inner) = &entries[0].1.value else {
            panic!()
        };
        let (start, len) = inner[0].1.span.unwrap();
        assert_eq!(&text[start..start + len], "https://x/y");
        let (start, len) = inner[0].0.span.unwrap();
        assert_eq!(&text[start..start + len], "url");
        let (start, len) = inner[1].1.span.unwrap();
        assert!(
            text[start..start + len].contains("pin"),
            "{:?}",
            &text[start..start + len]
        );
        let (start, _) = inner[2].1.span.unwrap();
        assert_eq!(&text[start..start + 1], "{");
    }

    #[test]
    fn syntax_errors_have_locations() {
        let (loc, msg) = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(loc.is_known(), "{msg}");
    }

    #[test]
    fn numbers_and_booleans_keep_their_text() {
        let node = parse("v: {a: 1.10, b: yes, c: 0x1F, d: 007, e: -0.0, f: [1e3]}\n").unwrap();
        let Value::Map(entries) = &node.value else {
            panic!()
        };
        let Value::Map(vars) = &entries[0].1.value else {
            panic!()
        };
        let raw: Vec<&str> = vars.iter().filter_map(|(_, n)| n.raw.as_deref()).collect();
        assert_eq!(raw, ["1.10", "yes", "0x1F", "007", "-0.0"]);
        let Value::Seq(items) = &vars[5].1.value else {
            panic!()
        };
        assert_eq!(items[0].raw.as_deref(), Some("1e3"));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        assert!(parse("a: 1\na: 2\n").is_err());
    }
}
