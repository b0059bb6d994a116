//! Problems found in user input, with where they are and what to do about them.

use std::fmt;

/// A position in the manifest file, 1-based. `line == 0` means unknown. (Reading it from YAML
/// is the manifest reader's business: `manifest::yaml`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Loc {
    pub line: u64,
    pub column: u64,
}

/// One problem in a manifest: reported together with all the others, never one at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Loc,
    /// The image the problem belongs to, when it belongs to one.
    pub image: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(loc: Loc, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            loc,
            image: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn image(mut self, name: Option<&str>) -> Diagnostic {
        self.image = name.map(str::to_string);
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    /// `file:line:col: image `x`: message` and an indented hint line.
    pub fn render(&self, file: &str) -> String {
        let mut out = String::new();
        if self.loc.is_known() {
            out.push_str(&format!("{file}:{}: ", self.loc));
        } else {
            out.push_str(&format!("{file}: "));
        }
        if let Some(image) = &self.image {
            out.push_str(&format!("image `{image}`: "));
        }
        out.push_str(&self.message);
        if let Some(hint) = &self.hint {
            out.push_str(&format!("\n  hint: {hint}"));
        }
        out
    }
}

/// All problems of one manifest, in file order.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: String,
    pub items: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.items.len();
        write!(
            f,
            "{} problem{} in {}:",
            n,
            if n == 1 { "" } else { "s" },
            self.file
        )?;
        for d in &self.items {
            for line in d.render(&self.file).lines() {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The known word closest to `word`, if it is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= (k.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let known = ["checksum", "url", "decompress", "type"];
        assert_eq!(closest("checksun", &known), Some("checksum"));
        assert_eq!(closest("decompres", &known), Some("decompress"));
        assert_eq!(closest("URL", &known), Some("url"));
        assert_eq!(closest("banana", &known), None);
    }

    #[test]
    fn renders_location_image_and_hint() {
        let d = Diagnostic::new(Loc { line: 3, column: 5 }, "bad")
            .image(Some("x"))
            .hint("fix it");
        assert_eq!(
            d.render("m.yaml"),
            "m.yaml:3:5: image `x`: bad\n  hint: fix it"
        );
    }
}
