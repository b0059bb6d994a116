//! Fan-out: a plan's work split into units that separate CI jobs stage without the lock, and
//! the document a GitHub Actions matrix takes (`plan --matrix`), and what a leg leaves behind.
//!
//! A unit is an image whose bytes must be acquired: a create or replace that downloads or
//! builds (a restore from the history, an update, a delete and a no-op move no image bytes and
//! are left to promotion). Units go into waves: a Packer build whose variables take another
//! unit's checksum, URL or size can only start once that unit is staged.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::checksum::Checksum;
use crate::manifest::reference::{self, Field};
use crate::plan::{Action, Change, Plan};
use crate::spec::SpecSource;
use crate::state::record::CiRun;

/// The version of the matrix document and of stage results.
pub const FORMAT_VERSION: &str = "1.0";

/// What one unit of work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitKind {
    /// Downloaded over HTTP (verified, decompressed, verified).
    Download,
    /// Built with Packer: it needs a runner with KVM.
    Build,
}

impl UnitKind {
    pub fn needs_kvm(self) -> bool {
        self == UnitKind::Build
    }
}

/// An image to stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub kind: UnitKind,
    /// Units whose staged bytes its inputs take (a build's `{{ images.NAME.checksum }}`).
    pub needs: Vec<String>,
    /// 1 for units that need nothing staged first.
    pub wave: usize,
}

/// Whether a change of the plan is staged by a leg (rather than done by promotion itself).
pub fn is_unit(change: &Change) -> bool {
    matches!(change.action, Action::Create | Action::Replace)
        && change.restore.is_none()
        && change.after.is_some()
}

/// Images whose staged values the change's build takes: references to a checksum, URL or size
/// (a key is known from the plan). Units only: other images are published already.
fn staged_inputs(change: &Change, units: &HashMap<&str, ()>) -> Vec<String> {
    let Some(SpecSource::Packer { variables, .. }) = change.after.as_ref().map(|a| &a.spec.source)
    else {
        return Vec::new();
    };
    let mut needs: Vec<String> = variables
        .values()
        .flat_map(|v| reference::parse_all(v).unwrap_or_default())
        .filter(|r| r.field != Field::Key && units.contains_key(r.image.as_str()))
        .map(|r| r.image)
        .collect();
    needs.sort();
    needs.dedup();
    needs
}

/// The plan's units, in plan order, each in the earliest wave its inputs allow.
pub fn units(plan: &Plan) -> Vec<Unit> {
    let names: HashMap<&str, ()> = plan
        .changes
        .iter()
        .filter(|c| is_unit(c))
        .map(|c| (c.name.as_str(), ()))
        .collect();
    let mut units: Vec<Unit> = plan
        .changes
        .iter()
        .filter(|c| is_unit(c))
        .map(|c| Unit {
            name: c.name.clone(),
            kind: match c.after.as_ref().map(|a| &a.spec.source) {
                Some(SpecSource::Packer { .. }) => UnitKind::Build,
                _ => UnitKind::Download,
            },
            needs: staged_inputs(c, &names),
            wave: 1,
        })
        .collect();
    // Longest path: a checked plan is acyclic, so this settles within as many rounds as there
    // are units; the bound keeps a hostile plan file from looping.
    for _ in 0..units.len() {
        let waves: HashMap<String, usize> =
            units.iter().map(|u| (u.name.clone(), u.wave)).collect();
        let mut moved = false;
        for unit in &mut units {
            let wave = 1 + unit
                .needs
                .iter()
                .filter_map(|n| waves.get(n))
                .max()
                .unwrap_or(&0);
            if wave != unit.wave {
                unit.wave = wave;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    units
}

/// GitHub's documented limits on what a plan job can hand a matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Jobs a matrix may generate per workflow run.
    pub legs_per_matrix: usize,
    /// A job's outputs (each wave's matrix is one output).
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            legs_per_matrix: 256,
            output_bytes: 1024 * 1024,
        }
    }
}

/// The document `plan --matrix` writes: one GitHub Actions matrix per wave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatrixDocument {
    pub format_version: String,
    /// The saved plan the legs stage (see [`plan_id`]).
    pub plan: String,
    pub units: usize,
    pub legs: usize,
    /// Whether some leg stages more than one unit (the limits were reached).
    pub batched: bool,
    pub waves: Vec<Wave>,
    /// Why units were batched, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wave {
    pub wave: usize,
    /// What `strategy.matrix` takes, as is: `fromJSON(...)`.
    pub matrix: GithubMatrix,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GithubMatrix {
    pub include: Vec<Leg>,
}

/// One job of a matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    /// Unique in the run: name the leg's result artifact after it.
    pub leg: String,
    pub wave: usize,
    /// The units, comma-separated, as `labctl stage --unit` takes them.
    pub units: String,
    pub images: Vec<String>,
    /// A Packer build is among its units: run it where `/dev/kvm` works.
    pub kvm: bool,
}

/// The units a leg was asked to stage (`--unit`), once each in the order asked, with their
/// wave. `plan_file` names the saved plan in the error.
pub fn requested(
    plan: &Plan,
    asked: &[String],
    plan_file: &str,
) -> Result<Vec<(String, usize)>, NotAUnit> {
    let units = units(plan);
    let mut out: Vec<(String, usize)> = Vec::new();
    for name in asked {
        let Some(unit) = units.iter().find(|u| &u.name == name) else {
            return Err(NotAUnit {
                name: name.clone(),
                in_plan: plan.change(name).is_some(),
                units: units.iter().map(|u| u.name.clone()).collect(),
                plan_file: plan_file.to_string(),
            });
        };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), unit.wave));
        }
    }
    Ok(out)
}

/// A name given to `labctl stage --unit` that is not a unit of the plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` {}", if *.in_plan { "has nothing to download or build in this plan" } else { "is not in this plan" })]
pub struct NotAUnit {
    pub name: String,
    /// Whether the plan has a change of that name (one that moves no image bytes).
    pub in_plan: bool,
    /// The plan's units.
    pub units: Vec<String>,
    pub plan_file: String,
}

impl crate::hint::Hint for NotAUnit {
    fn hint(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some(if self.units.is_empty() {
            let file = &self.plan_file;
            format!("`{file}` has no units: apply it with `labctl apply {file}`").into()
        } else {
            format!("its units are: {}", self.units.join(", ")).into()
        })
    }
}

/// Names a saved plan by its bytes: legs and promotion find each other's results under it.
pub fn plan_id(plan_file: &[u8]) -> String {
    Checksum::sha256(plan_file).hex()[..16].to_string()
}

/// The matrix document for `plan`: a leg per unit, or batches when a wave has more units than a
/// matrix may have legs or its matrix would not fit a job output.
pub fn matrix(plan: &Plan, plan_id: &str, limits: &Limits) -> MatrixDocument {
    let units = units(plan);
    let mut notes = Vec::new();
    let last = units.iter().map(|u| u.wave).max().unwrap_or(0);
    let waves: Vec<Wave> = (1..=last)
        .map(|wave| {
            let these: Vec<&Unit> = units.iter().filter(|u| u.wave == wave).collect();
            wave_matrix(wave, &these, limits, &mut notes)
        })
        .collect();
    let legs = waves.iter().map(|w| w.matrix.include.len()).sum();
    MatrixDocument {
        format_version: FORMAT_VERSION.into(),
        plan: plan_id.into(),
        units: units.len(),
        batched: legs < units.len(),
        legs,
        waves,
        notes,
    }
}

fn wave_matrix(wave: usize, units: &[&Unit], limits: &Limits, notes: &mut Vec<String>) -> Wave {
    let mut legs = limits.legs_per_matrix.max(1).min(units.len());
    loop {
        let matrix = GithubMatrix {
            include: batch(wave, units, legs),
        };
        let bytes = serde_json::to_string(&matrix).map_or(usize::MAX, |s| s.len());
        if legs < units.len() {
            let why = if legs == limits.legs_per_matrix {
                format!("a matrix has at most {} legs", limits.legs_per_matrix)
            } else {
                format!(
                    "one leg per unit would not fit a job output ({} bytes at most)",
                    limits.output_bytes
                )
            };
            if bytes <= limits.output_bytes || legs <= 2 {
                notes.push(format!(
                    "wave {wave}: {} units batched into {legs} legs ({why})",
                    units.len()
                ));
                return Wave { wave, matrix };
            }
        } else if bytes <= limits.output_bytes {
            return Wave { wave, matrix };
        }
        legs = (legs / 2).max(1);
    }
}

/// `units` spread over `legs` legs, builds apart from downloads so that only legs with a build
/// need a KVM runner.
fn batch(wave: usize, units: &[&Unit], legs: usize) -> Vec<Leg> {
    if legs >= units.len() {
        return units
            .iter()
            .map(|u| leg(u.name.clone(), wave, &[u]))
            .collect();
    }
    let (builds, downloads): (Vec<&Unit>, Vec<&Unit>) =
        units.iter().partition(|u| u.kind.needs_kvm());
    // Legs in proportion to the units of each kind, at least one for each kind present.
    let mut build_legs = (legs * builds.len()).div_ceil(units.len());
    if !downloads.is_empty() {
        build_legs = build_legs.min(legs - 1);
    }
    if !builds.is_empty() {
        build_legs = build_legs.max(1);
    }
    let download_legs = legs - build_legs;
    let mut out = Vec::new();
    for (kind, group, n) in [
        ("build", &builds, build_legs),
        ("download", &downloads, download_legs),
    ] {
        if group.is_empty() || n == 0 {
            continue;
        }
        let mut bins: Vec<Vec<&Unit>> = vec![Vec::new(); n];
        for (i, u) in group.iter().enumerate() {
            bins[i % n].push(u);
        }
        for (i, bin) in bins.into_iter().enumerate() {
            out.push(leg(format!("wave{wave}-{kind}-{}", i + 1), wave, &bin));
        }
    }
    out
}

fn leg(name: String, wave: usize, units: &[&Unit]) -> Leg {
    let images: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
    Leg {
        leg: name,
        wave,
        units: images.join(","),
        kvm: units.iter().any(|u| u.kind.needs_kvm()),
        images,
    }
}

/// What a leg staged for one image, kept in the store beside the blob
/// (`.labctl/staged/<plan>/<image>.json`) and written to the leg's result file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageResult {
    pub format_version: String,
    pub plan: String,
    pub image: String,
    pub status: StageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The next step for a failure, when there is an obvious one (kept apart from `error`, so
    /// promotion shows it as a hint too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<StagedBlob>,
    pub staged_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run: Option<CiRun>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageStatus {
    Staged,
    Failed,
}

/// The verified bytes of one image, awaiting promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedBlob {
    /// `.labctl/blobs/<algorithm>/<hex>` of `checksum`.
    pub key: String,
    /// What the published bytes hash to, in the manifest's algorithm.
    pub checksum: Checksum,
    pub sha256: Checksum,
    pub size: u64,
    /// Whether this leg uploaded it (`false`: the same bytes were already staged).
    pub uploaded: bool,
    /// The blob's ETag as the leg left it: where the store refuses a copy whose source changed,
    /// promotion copies only while it holds, without asking the store about the blob first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The checksums of other images the build took (promotion refuses the blob if they are
    /// not the ones it publishes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Checksum>,
    #[serde(default)]
    pub source: StagedSource,
}

/// What the record of the promoted image says about where the bytes came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packer_version: Option<String>,
}

/// Whether a document of `version` is one this labctl reads: the same major version.
fn readable_format(version: &str) -> Result<(), String> {
    if version.split('.').next() == FORMAT_VERSION.split('.').next() {
        Ok(())
    } else {
        Err(format!(
            "format {version} is not one this labctl reads ({FORMAT_VERSION})"
        ))
    }
}

/// Stage results are small; reading one stops here.
pub const MAX_RESULT_BYTES: usize = 256 * 1024;

impl StageResult {
    pub fn parse(bytes: &[u8]) -> Result<StageResult, String> {
        if bytes.len() > MAX_RESULT_BYTES {
            return Err(format!("larger than {MAX_RESULT_BYTES} bytes"));
        }
        let result: StageResult = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        result.check()?;
        Ok(result)
    }

    /// What a result must be to be read at all: of a format this labctl reads, naming the blob
    /// its checksum names.
    fn check(&self) -> Result<(), String> {
        readable_format(&self.format_version)?;
        if let Some(blob) = &self.blob {
            if blob.key != crate::layout::blob_key(&blob.checksum) {
                return Err(format!(
                    "its blob `{}` is not the key of its checksum {}",
                    blob.key, blob.checksum
                ));
            }
        }
        Ok(())
    }

    /// Whether this is what was staged of `image` for the plan `plan_id`: a result is trusted
    /// only at the key of the image and plan it names.
    pub fn speaks_for(&self, plan_id: &str, image: &str) -> bool {
        self.plan == plan_id && self.image == image
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a stage result serializes") + "\n"
    }
}

/// Every result one leg wrote, in one object (`.labctl/staged/<plan>/legs/<digest>.json`), each
/// with the ETag the store answered its write with. The per-image results stay what counts: a
/// promotion takes a result from here only while the listing gives its own key that same ETag,
/// and reads the others one by one. So a promotion of thousands of units reads one object a leg
/// instead of one an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegResults {
    pub format_version: String,
    pub plan: String,
    pub results: Vec<WrittenResult>,
}

/// A stage result as its leg wrote it to its own key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenResult {
    pub etag: String,
    pub result: StageResult,
}

/// A leg's results are read whole and several at once; larger ones are not written (promotion
/// then reads that leg's results one by one). Some 2,800 results fit.
pub const MAX_LEG_RESULTS_BYTES: usize = 2 * 1024 * 1024;

impl LegResults {
    pub fn parse(bytes: &[u8]) -> Result<LegResults, String> {
        if bytes.len() > MAX_LEG_RESULTS_BYTES {
            return Err(format!("larger than {MAX_LEG_RESULTS_BYTES} bytes"));
        }
        let leg: LegResults = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        readable_format(&leg.format_version)?;
        for written in &leg.results {
            written
                .result
                .check()
                .map_err(|why| format!("the result of `{}`: {why}", written.result.image))?;
        }
        Ok(leg)
    }

    /// The document, or `None` when it would be larger than a promotion reads.
    pub fn to_json(&self) -> Option<String> {
        let json = serde_json::to_string(self).expect("a leg's results serialize") + "\n";
        (json.len() <= MAX_LEG_RESULTS_BYTES).then_some(json)
    }
}

#[cfg(test)]
mod tests;
