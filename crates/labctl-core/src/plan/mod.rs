//! The plan: what apply will do to make the store match the manifest, and why.
//!
//! A plan is data. It is computed by a pure function ([`compute`]) from the desired state and the
//! actual state, serialized as-is for `--json` and `--out`, and rendered by `render`; the exit
//! code and every output format come from the same value.

pub mod check;
mod engine;
pub mod fields;
pub mod reason;

use std::borrow::Cow;

use crate::hint::Hint;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use engine::index_files;
pub use engine::{compute, Desired, PlanContext, PlanOptions};

pub use fields::FieldChange;
pub use reason::{DependencyMove, Reason, SpecField};

use crate::checksum::Checksum;
use crate::state::record::HistoryEntry;

/// The texts of the reasons drift reports under findings of their own, and of adoption (what
/// [`Reason`] prints; code compares the enum, never these).
pub const REASON_OBJECT_MISSING: &str = "object missing from store";
pub const REASON_OBJECT_MODIFIED: &str = "object modified outside labctl";
pub const REASON_RECORD_CORRUPT: &str = "the state record is ";
pub const REASON_ADOPT: &str = "published by an interrupted apply that did not write its record; adopted after reading it back (nothing is downloaded or built)";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{} written by a newer labctl: {}", plural(.0.len(), "record is", "records are"), .0.join(", "))]
    NewerRecords(Vec<String>),
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

impl Hint for PlanError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        Some(Cow::Borrowed(match self {
            PlanError::NewerRecords(_) => {
                "upgrade labctl to the version that wrote them; this one cannot tell what they promise and changes nothing"
            }
        }))
    }
}

/// Version of the JSON plan format. Additive changes bump the minor version.
pub const FORMAT_VERSION: &str = "1.4";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Replace,
    Update,
    Delete,
    NoOp,
}

impl Action {
    pub fn symbol(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Replace => "-/+",
            Action::Update => "~",
            Action::Delete => "-",
            Action::NoOp => " ",
        }
    }

    /// Whether the change removes or overwrites published bytes.
    pub fn is_destructive(self) -> bool {
        matches!(self, Action::Replace | Action::Delete)
    }

    pub fn verb(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Replace => "replaced",
            Action::Update => "updated in place",
            Action::Delete => "deleted",
            Action::NoOp => "left unchanged",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::NoOp => "no-op",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: String,
    pub labctl_version: String,
    /// The manifest file the plan was computed from, as given on the command line.
    pub manifest: String,
    pub manifest_digest: Checksum,
    pub store: String,
    /// Whether objects were HEADed (`--refresh=false` skips that).
    pub refreshed: bool,
    pub prune: bool,
    pub summary: Summary,
    /// Every image, no-ops included, in the order apply runs them; deletes last.
    pub changes: Vec<Change>,
    /// Records whose image left the manifest and that this plan keeps.
    pub orphans: Vec<Orphan>,
    /// ETag of every record read: apply refuses the plan if any of them moved.
    pub prior_state: BTreeMap<String, String>,
    /// The consumer index in `images/` (added in format 1.2).
    #[serde(default)]
    pub index: IndexPlan,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IndexAction {
    /// Rewritten after every image change is done.
    Write,
    #[default]
    NoOp,
}

/// What apply does to `images/SHA256SUMS`, `images/index.json` and the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPlan {
    pub action: IndexAction,
    pub reasons: Vec<String>,
    /// The keys written, in the order they are written.
    pub files: Vec<String>,
    /// Keys deleted (a signature once signing is no longer configured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<String>,
    /// Objects read back once to learn their sha256, because their record has only another
    /// algorithm's checksum.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backfill: Vec<Backfill>,
    /// Whether `SHA256SUMS` is signed (`spec.index.signing`).
    #[serde(default)]
    pub signed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    pub name: String,
    pub key: String,
    pub record_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub create: usize,
    pub replace: usize,
    pub update: usize,
    pub delete: usize,
    pub no_op: usize,
    pub orphaned: usize,
}

impl Summary {
    pub fn has_changes(&self) -> bool {
        self.create + self.replace + self.update + self.delete > 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub name: String,
    /// Object key (`images/…`).
    pub key: String,
    pub record_key: String,
    pub action: Action,
    pub reasons: Vec<Reason>,
    pub depends_on: Vec<String>,
    // Boxed, like the rarely present fields below: a plan holds a change per image, and inline
    // these made each one over a KiB before any of it was known.
    pub before: Option<Box<Before>>,
    pub after: Option<Box<After>>,
    /// Spec fields that differ between the record and the manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub field_changes: Vec<FieldChange>,
    /// A replace that copies earlier bytes back from the history instead of downloading or
    /// building them (added in format 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Box<HistoryEntry>>,
    /// What happens to the image's kept versions (added in format 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Box<HistoryPlan>>,
    /// An update that adopts an object published without a record (added in format 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<Box<Adopt>>,
}

/// An object found at the image's key without a record, whose labctl metadata already says it
/// is exactly what the plan wants: a run was killed after publishing it and before writing the
/// record. Apply reads it back and verifies it instead of downloading or building it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopt {
    /// The object's ETag when planned: apply adopts only these bytes.
    pub etag: String,
    pub size: u64,
    /// What its metadata says the bytes hash to (the declared algorithm).
    pub checksum: Checksum,
}

/// Kept versions of an image (`history: N`) through one change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPlan {
    /// The current object is copied into the history (server-side) before it is overwritten.
    pub keep_current: bool,
    /// Its key, when the record knows the object's sha256 (else apply reads it first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_key: Option<String>,
    /// Kept versions deleted after the change: beyond `history: N`, the one restored (it is the
    /// current object again), or all of them when the image is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trim: Vec<String>,
    /// How many versions are kept afterwards.
    pub kept: usize,
    /// `history: N` as the manifest says now (0 for a delete).
    pub limit: u32,
}

impl HistoryPlan {
    pub fn is_empty(&self) -> bool {
        !self.keep_current && self.trim.is_empty()
    }
}

/// What the store holds now, from the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Before {
    pub checksum: Option<Checksum>,
    /// The stored bytes' sha256, when the record knows it (added in format 1.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Checksum>,
    pub size: Option<u64>,
    pub fingerprint: Option<Checksum>,
    pub uploaded_at: Option<String>,
    /// Written by the earlier sync tool.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy: bool,
    /// The recorded spec, typed: a plan of tens of thousands of images holds one per image, and
    /// a JSON tree of it costs several times the struct.
    pub spec: Option<crate::spec::NormalizedSpec>,
    /// Kept earlier versions, newest first (added in format 1.2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

/// What the store will hold after apply. `null` values listed in `unknown` are known only after
/// apply (a Packer build's output, a checksum taken from a list at download time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct After {
    pub checksum: Option<Checksum>,
    /// The checksum the download must have (pinned, or looked up in the manifest's checksum
    /// list when the plan was made). Added in format 1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_checksum: Option<Checksum>,
    pub fingerprint: Option<Checksum>,
    /// The image as the manifest wants it: what apply executes, not the manifest.
    pub spec: crate::spec::NormalizedSpec,
    /// The armored OpenPGP key that signs the checksum list, when the spec names one (added in
    /// format 1.4): apply verifies the list with the key that was reviewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgp_key: Option<String>,
    pub dependencies: BTreeMap<String, Option<Checksum>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<KnownAfterApply>,
}

/// A value of [`After`] that only apply learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KnownAfterApply {
    /// The published checksum (a build's output, a checksum looked up at download time).
    Checksum,
    Size,
    /// A dependency's checksum is itself known only after apply.
    Fingerprint,
}

impl KnownAfterApply {
    pub fn name(self) -> &'static str {
        match self {
            KnownAfterApply::Checksum => "checksum",
            KnownAfterApply::Size => "size",
            KnownAfterApply::Fingerprint => "fingerprint",
        }
    }
}

/// Compared with the field names the plan JSON lists.
impl PartialEq<&str> for KnownAfterApply {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orphan {
    /// The record's name, or its destination when the record cannot be read.
    pub name: String,
    pub key: String,
    pub record_key: String,
    pub protected: bool,
    pub reason: String,
}

/// A plan's changes as the dependency graph's nodes: apply runs them from its ready queue.
impl crate::graph::Node for Change {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> Vec<String> {
        self.depends_on.clone()
    }
}

impl Change {
    /// What apply needs to make this change, taken from the plan alone.
    pub fn desired(&self) -> Option<Desired> {
        let after = self.after.as_ref()?;
        Some(Desired {
            spec: after.spec.clone(),
            listed: after.source_checksum.clone(),
            pgp_key: after.pgp_key.clone(),
        })
    }
}

impl Plan {
    pub fn change(&self, name: &str) -> Option<&Change> {
        self.changes.iter().find(|c| c.name == name)
    }

    /// Whether apply would change anything: an image, or the consumer index alone.
    pub fn has_changes(&self) -> bool {
        self.summary.has_changes() || self.index.action == IndexAction::Write
    }

    /// `Plan: 1 to create, 2 to replace, 0 to update, 0 to delete.`
    pub fn summary_line(&self) -> String {
        let s = &self.summary;
        let line = format!(
            "Plan: {} to create, {} to replace, {} to update, {} to delete.",
            s.create, s.replace, s.update, s.delete
        );
        // With image changes the index is always rewritten; alone, it must not read as nothing.
        if !s.has_changes() && self.index.action == IndexAction::Write {
            format!("{line} The consumer index is rewritten.")
        } else {
            line
        }
    }
}
