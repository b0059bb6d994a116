//! Why a change is planned: a closed set of reasons that code may branch on, each serialized to
//! the sentence a person reads (the plan JSON's `reasons` are these texts, unchanged).
//!
//! Rewording a sentence changes only [`Reason`]'s `Display`; nothing compares texts.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A spec field whose change is a reason of its own (see [`SpecField::of_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecField {
    Name,
    Protect,
    History,
    /// `expected`: the published checksum.
    Checksum,
    Destination,
    Dependencies,
    SourceType,
    SourceUrl,
    SourceChecksum,
    Decompression,
    Template,
    TemplatePath,
    Artifact,
    Variables,
    /// Any other field.
    Spec,
}

impl SpecField {
    /// The field a JSON path of the normalized spec (`source.url`, `source.variables.x`)
    /// belongs to.
    pub fn of_path(path: &str) -> SpecField {
        match path {
            "name" => SpecField::Name,
            "protect" => SpecField::Protect,
            "history" => SpecField::History,
            "expected" => SpecField::Checksum,
            "destination" => SpecField::Destination,
            "dependsOn" => SpecField::Dependencies,
            "source.type" => SpecField::SourceType,
            "source.url" => SpecField::SourceUrl,
            "source.checksum" => SpecField::SourceChecksum,
            "source.decompress" => SpecField::Decompression,
            "source.templateHash" => SpecField::Template,
            "source.path" => SpecField::TemplatePath,
            "source.artifact" => SpecField::Artifact,
            p if p.starts_with("source.variables.") => SpecField::Variables,
            _ => SpecField::Spec,
        }
    }

    /// Whether a change to the field can change the published bytes (else only the record).
    pub fn affects_content(self) -> bool {
        !matches!(
            self,
            SpecField::Name | SpecField::Protect | SpecField::History
        )
    }

    const ALL: [SpecField; 15] = [
        SpecField::Name,
        SpecField::Protect,
        SpecField::History,
        SpecField::Checksum,
        SpecField::Destination,
        SpecField::Dependencies,
        SpecField::SourceType,
        SpecField::SourceUrl,
        SpecField::SourceChecksum,
        SpecField::Decompression,
        SpecField::Template,
        SpecField::TemplatePath,
        SpecField::Artifact,
        SpecField::Variables,
        SpecField::Spec,
    ];

    fn text(self) -> &'static str {
        match self {
            SpecField::Name => "name changed",
            SpecField::Protect => "protect changed",
            SpecField::History => "history changed",
            SpecField::Checksum => "checksum changed",
            SpecField::Destination => "destination changed",
            SpecField::Dependencies => "dependencies changed",
            SpecField::SourceType => "source type changed",
            SpecField::SourceUrl => "source url changed",
            SpecField::SourceChecksum => "source checksum changed",
            SpecField::Decompression => "decompression changed",
            SpecField::Template => "template changed",
            SpecField::TemplatePath => "template path changed",
            SpecField::Artifact => "artifact changed",
            SpecField::Variables => "variables changed",
            SpecField::Spec => "spec changed",
        }
    }
}

/// How a dependency's bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DependencyMove {
    /// Its published checksum differs from the one the record names.
    Changed,
    /// The record names no checksum for it.
    Added,
    /// It is created by this plan.
    WillBeCreated,
    /// It is replaced by this plan.
    WillBeReplaced,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Nothing is published at the key.
    NotInStore,
    /// An object without a record is at the key, and not one this spec published.
    UnrecordedObjectOverwritten,
    /// An interrupted apply published exactly this spec without writing its record.
    Adopt,
    /// `--replace NAME`.
    ReplacementRequested,
    /// The record cannot be read (the parser's words).
    RecordCorrupt(String),
    /// A record of the earlier tool whose checksum is the wanted one.
    LegacyChecksumMatches,
    /// A record of the earlier tool that cannot be compared with the spec.
    LegacyUnmatched,
    /// A spec field changed (`SpecField::Checksum`: the published checksum differs).
    Field(SpecField),
    Dependency {
        name: String,
        how: DependencyMove,
    },
    ObjectMissing,
    ObjectModified,
    RestoreFromHistory,
    /// The image left the manifest.
    LeftManifest,
    /// The image now publishes to another destination (relative to `images/`).
    MovedTo(String),
    /// Its kept versions go with it (how many).
    HistoryDeletedWith(usize),
    /// A reason written by another labctl version, read back from a saved plan: shown as is,
    /// never branched on.
    Unrecognized(String),
}

const RECORD_CORRUPT_PREFIX: &str = super::REASON_RECORD_CORRUPT;
const RECORD_CORRUPT_SUFFIX: &str = "; the image is published again to rewrite it";

impl Reason {
    /// The sentence a person reads (what `Display` writes).
    pub fn sentence(&self) -> String {
        self.to_string()
    }

    /// Whether the reason says the store's object is not what the record describes (drift
    /// reports these under findings of their own, and apply keeps no history of such bytes).
    pub fn is_object_drift(&self) -> bool {
        matches!(self, Reason::ObjectMissing | Reason::ObjectModified)
    }

    /// Reads back a reason from its text; texts of other versions are kept as they are.
    pub fn parse(text: &str) -> Reason {
        let fixed = [
            Reason::NotInStore,
            Reason::UnrecordedObjectOverwritten,
            Reason::Adopt,
            Reason::ReplacementRequested,
            Reason::LegacyChecksumMatches,
            Reason::LegacyUnmatched,
            Reason::ObjectMissing,
            Reason::ObjectModified,
            Reason::RestoreFromHistory,
            Reason::LeftManifest,
        ];
        if let Some(r) = fixed.into_iter().find(|r| *r == text) {
            return r;
        }
        if let Some(f) = SpecField::ALL.into_iter().find(|f| f.text() == text) {
            return Reason::Field(f);
        }
        if let Some(why) = text
            .strip_prefix(RECORD_CORRUPT_PREFIX)
            .and_then(|t| t.strip_suffix(RECORD_CORRUPT_SUFFIX))
        {
            return Reason::RecordCorrupt(why.to_string());
        }
        if let Some(dest) = text.strip_prefix("image now publishes to images/") {
            return Reason::MovedTo(dest.to_string());
        }
        if let Some(rest) = text.strip_prefix("dependency ") {
            for (suffix, how) in [
                (" changed", DependencyMove::Changed),
                (" added", DependencyMove::Added),
                (" will be created", DependencyMove::WillBeCreated),
                (" will be replaced", DependencyMove::WillBeReplaced),
            ] {
                if let Some(name) = rest.strip_suffix(suffix) {
                    return Reason::Dependency {
                        name: name.to_string(),
                        how,
                    };
                }
            }
        }
        if let Some(n) = text
            .strip_prefix("its ")
            .and_then(|t| t.split_once(' '))
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .filter(|n| Reason::HistoryDeletedWith(*n) == text)
        {
            return Reason::HistoryDeletedWith(n);
        }
        Reason::Unrecognized(text.to_string())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotInStore => f.write_str("not in store"),
            Reason::UnrecordedObjectOverwritten => f.write_str(
                "an object without a record is at its key (not published as this spec); it is overwritten",
            ),
            Reason::Adopt => f.write_str(super::REASON_ADOPT),
            Reason::ReplacementRequested => f.write_str("replacement requested"),
            Reason::RecordCorrupt(why) => {
                write!(f, "{RECORD_CORRUPT_PREFIX}{why}{RECORD_CORRUPT_SUFFIX}")
            }
            Reason::LegacyChecksumMatches => f.write_str(
                "record written by an earlier tool; checksum matches, adopting without re-upload",
            ),
            Reason::LegacyUnmatched => {
                f.write_str("record written by an earlier tool cannot be matched to this spec")
            }
            Reason::Field(field) => f.write_str(field.text()),
            Reason::Dependency { name, how } => match how {
                DependencyMove::Changed => write!(f, "dependency {name} changed"),
                DependencyMove::Added => write!(f, "dependency {name} added"),
                DependencyMove::WillBeCreated => write!(f, "dependency {name} will be created"),
                DependencyMove::WillBeReplaced => write!(f, "dependency {name} will be replaced"),
            },
            Reason::ObjectMissing => f.write_str(super::REASON_OBJECT_MISSING),
            Reason::ObjectModified => f.write_str(super::REASON_OBJECT_MODIFIED),
            Reason::RestoreFromHistory => f.write_str("restore from history"),
            Reason::LeftManifest => f.write_str("image left the manifest"),
            Reason::MovedTo(dest) => write!(f, "image now publishes to images/{dest}"),
            Reason::HistoryDeletedWith(n) => write!(
                f,
                "its {n} kept version{} under history/ {} deleted with it",
                if *n == 1 { "" } else { "s" },
                if *n == 1 { "is" } else { "are" }
            ),
            Reason::Unrecognized(text) => f.write_str(text),
        }
    }
}

/// The reasons' texts, joined (as views print them).
pub fn joined(reasons: &[Reason], separator: &str) -> String {
    reasons
        .iter()
        .map(Reason::to_string)
        .collect::<Vec<_>>()
        .join(separator)
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        Ok(Reason::parse(&String::deserialize(d)?))
    }
}

/// A reason from its sentence (tests and hand-written plans).
impl From<&str> for Reason {
    fn from(text: &str) -> Reason {
        Reason::parse(text)
    }
}

/// Tests and views compare reasons with the sentences people read.
impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.sentence() == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.sentence() == *other
    }
}

impl PartialEq<String> for Reason {
    fn eq(&self, other: &String) -> bool {
        self.sentence() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Reason> {
        let mut all = vec![
            Reason::NotInStore,
            Reason::UnrecordedObjectOverwritten,
            Reason::Adopt,
            Reason::ReplacementRequested,
            Reason::RecordCorrupt("not JSON: expected value at line 1 column 1".into()),
            Reason::LegacyChecksumMatches,
            Reason::LegacyUnmatched,
            Reason::ObjectMissing,
            Reason::ObjectModified,
            Reason::RestoreFromHistory,
            Reason::LeftManifest,
            Reason::MovedTo("talos/v1/talos.img".into()),
            Reason::HistoryDeletedWith(1),
            Reason::HistoryDeletedWith(3),
        ];
        all.extend(SpecField::ALL.into_iter().map(Reason::Field));
        for how in [
            DependencyMove::Changed,
            DependencyMove::Added,
            DependencyMove::WillBeCreated,
            DependencyMove::WillBeReplaced,
        ] {
            all.push(Reason::Dependency {
                name: "vyos-iso".into(),
                how,
            });
        }
        all
    }

    #[test]
    fn every_reason_reads_back_from_its_text() {
        for r in every_kind() {
            let text = serde_json::to_string(&r).unwrap();
            let back: Reason = serde_json::from_str(&text).unwrap();
            assert_eq!(back, r, "{text}");
        }
    }

    #[test]
    fn texts_of_other_versions_are_kept_as_they_are() {
        let r = Reason::parse("a reason this version never wrote");
        assert_eq!(
            r,
            Reason::Unrecognized("a reason this version never wrote".into())
        );
        assert_eq!(r.to_string(), "a reason this version never wrote");
        assert!(!r.is_object_drift());
    }

    #[test]
    fn the_texts_are_the_plan_formats() {
        assert_eq!(Reason::Field(SpecField::Checksum), "checksum changed");
        assert_eq!(
            Reason::HistoryDeletedWith(1),
            "its 1 kept version under history/ is deleted with it"
        );
        assert_eq!(
            Reason::Dependency {
                name: "iso".into(),
                how: DependencyMove::WillBeReplaced
            },
            "dependency iso will be replaced"
        );
        assert!(SpecField::of_path("source.variables.iso_url").affects_content());
        assert!(!SpecField::of_path("protect").affects_content());
        assert_eq!(SpecField::of_path("source.whatever"), SpecField::Spec);
    }
}
