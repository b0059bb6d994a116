//! What Synology Cloud Sync will not carry to the NAS (its help's list of unsupported names):
//! a destination that breaks one of these rules publishes fine and never reaches the machines,
//! so it is refused when the manifest is read.

use std::fmt;

/// Names Cloud Sync skips wherever they appear.
const RESERVED: [&str; 5] = [
    "@eaDir",
    "#recycle",
    "#snapshot",
    ".SynologyWorkingDirectory",
    "@SynologyCloudSync",
];
/// Longest name (bytes) and path (characters) Cloud Sync carries.
const MAX_NAME_BYTES: usize = 255;
const MAX_PATH_CHARS: usize = 2048;

/// The rule a destination breaks, with the offending segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsyncable {
    /// `._name` (macOS resource forks) or `~name` (temporary files).
    SkippedPrefix {
        segment: String,
        prefix: &'static str,
    },
    /// `@eaDir`, `#recycle`, `#snapshot`, `.SynologyWorkingDirectory`, `@SynologyCloudSync`,
    /// `.SYNOPPSDB…`.
    Reserved {
        segment: String,
    },
    /// Anything under `@tmp`.
    UnderTmp,
    /// A name ending in `.` or a space (renamed `…_TailCharacterConflict`).
    TrailingCharacter {
        segment: String,
    },
    NameTooLong {
        segment: String,
        bytes: usize,
    },
    PathTooLong {
        chars: usize,
    },
    /// `:` or `\`.
    Character {
        segment: String,
        character: char,
    },
    /// A combining mark: the name is in decomposed (NFD) form.
    Decomposed {
        segment: String,
    },
}

impl fmt::Display for Unsyncable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unsyncable::SkippedPrefix { segment, prefix } => write!(
                f,
                "`{segment}` begins with `{prefix}`, which Synology Cloud Sync skips"
            ),
            Unsyncable::Reserved { segment } => write!(
                f,
                "`{segment}` is a name Synology reserves; Cloud Sync skips it"
            ),
            Unsyncable::UnderTmp => write!(f, "Synology Cloud Sync skips everything under `@tmp`"),
            Unsyncable::TrailingCharacter { segment } => write!(
                f,
                "`{segment}` ends in a dot or a space; Cloud Sync renames it (…_TailCharacterConflict)"
            ),
            Unsyncable::NameTooLong { segment, bytes } => write!(
                f,
                "the name `{segment}` is {bytes} bytes; Cloud Sync carries names of at most {MAX_NAME_BYTES}"
            ),
            Unsyncable::PathTooLong { chars } => write!(
                f,
                "the path is {chars} characters; Cloud Sync carries paths of at most {MAX_PATH_CHARS}"
            ),
            Unsyncable::Character { segment, character } => write!(
                f,
                "`{segment}` contains `{character}`, which Synology Cloud Sync does not carry"
            ),
            Unsyncable::Decomposed { segment } => write!(
                f,
                "`{segment}` is in decomposed (NFD) form, which Synology Cloud Sync does not carry"
            ),
        }
    }
}

/// The first Cloud Sync rule `destination` (a key below `images/`) breaks, if any.
pub fn check(destination: &str) -> Option<Unsyncable> {
    let chars = destination.chars().count();
    if chars > MAX_PATH_CHARS {
        return Some(Unsyncable::PathTooLong { chars });
    }
    for segment in destination.split('/') {
        let owned = || segment.to_string();
        if segment == "@tmp" {
            return Some(Unsyncable::UnderTmp);
        }
        if RESERVED.contains(&segment) || segment.starts_with(".SYNOPPSDB") {
            return Some(Unsyncable::Reserved { segment: owned() });
        }
        for prefix in ["._", "~"] {
            if segment.starts_with(prefix) {
                return Some(Unsyncable::SkippedPrefix {
                    segment: owned(),
                    prefix,
                });
            }
        }
        if segment.ends_with('.') || segment.ends_with(' ') {
            return Some(Unsyncable::TrailingCharacter { segment: owned() });
        }
        if segment.len() > MAX_NAME_BYTES {
            return Some(Unsyncable::NameTooLong {
                segment: owned(),
                bytes: segment.len(),
            });
        }
        if let Some(character) = segment.chars().find(|c| matches!(c, ':' | '\\')) {
            return Some(Unsyncable::Character {
                segment: owned(),
                character,
            });
        }
        // Combining diacritical marks (U+0300–U+036F): what NFD splits accented letters into.
        if segment
            .chars()
            .any(|c| ('\u{300}'..='\u{36f}').contains(&c))
        {
            return Some(Unsyncable::Decomposed { segment: owned() });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_its_segment() {
        let cases = [
            ("talos/._metal.raw", "begins with `._`"),
            ("~tmp/x.iso", "`~tmp` begins with `~`"),
            ("a/@eaDir/x", "`@eaDir` is a name Synology reserves"),
            ("#recycle/x", "`#recycle` is a name"),
            ("#snapshot/x", "`#snapshot`"),
            (".SynologyWorkingDirectory/x", "`.SynologyWorkingDirectory`"),
            ("@SynologyCloudSync/x", "`@SynologyCloudSync`"),
            (".SYNOPPSDB-x", "`.SYNOPPSDB-x`"),
            ("@tmp/x.iso", "everything under `@tmp`"),
            ("vyos/x.iso.", "`x.iso.` ends in a dot or a space"),
            ("vyos /x.iso", "`vyos ` ends in a dot or a space"),
            ("v:1/x.iso", "`v:1` contains `:`"),
            ("a\\b", "contains `\\`"),
            ("cafe\u{301}/x", "decomposed (NFD)"),
        ];
        for (dest, expected) in cases {
            let found = check(dest).unwrap_or_else(|| panic!("{dest} passes"));
            assert!(found.to_string().contains(expected), "{dest}: {found}");
        }
        let long = "n".repeat(256);
        assert!(matches!(
            check(&long),
            Some(Unsyncable::NameTooLong { bytes: 256, .. })
        ));
        let deep = vec!["d".repeat(200); 11].join("/");
        assert!(matches!(check(&deep), Some(Unsyncable::PathTooLong { .. })));
        for fine in [
            "talos/talos-1.9.1-metal-amd64.raw",
            "café/x",
            "a.b/c~d",
            "a/.hidden",
        ] {
            assert_eq!(check(fine), None, "{fine}");
        }
    }
}
