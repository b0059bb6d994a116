//! The bucket's layout, in one place: where images, state records and kept versions live, the
//! consumer index's files, labctl's own folder, and what a key may look like. A leaf module: it
//! uses nothing of the core but checksums, so that the manifest, the records, the consumer index
//! and the served folder all take their keys from here without importing one another.

use crate::checksum::Checksum;

/// Published images: what the NAS syncs.
pub const IMAGES_PREFIX: &str = "images/";
/// One state record per image (`metadata/<destination>.json`).
pub const METADATA_PREFIX: &str = "metadata/";
/// Replaced bytes kept by `history: N` (`history/<destination>/<sha256>`), never synced.
pub const HISTORY_PREFIX: &str = "history/";
/// labctl's own objects: the lock, the record snapshot, doctor's probes.
pub const LABCTL_PREFIX: &str = ".labctl/";

/// Bytes a fan-out leg staged, awaiting promotion: `.labctl/blobs/<algorithm>/<hex>`, named by
/// the checksum they were verified against, so the same content always lands on the same key.
pub const BLOBS_PREFIX: &str = ".labctl/blobs/";
/// What each leg staged for a plan: `.labctl/staged/<plan id>/<image>.json`.
pub const STAGED_PREFIX: &str = ".labctl/staged/";

/// Where bytes verified against `checksum` are staged.
pub fn blob_key(checksum: &Checksum) -> String {
    format!(
        "{BLOBS_PREFIX}{}/{}",
        checksum.algorithm.name(),
        checksum.hex()
    )
}

/// The checksum a blob key names; `None` for anything else under the blobs folder.
pub fn checksum_of_blob_key(key: &str) -> Option<Checksum> {
    let (algorithm, hex) = key.strip_prefix(BLOBS_PREFIX)?.split_once('/')?;
    format!("{algorithm}:{hex}")
        .parse::<Checksum>()
        .ok()
        .filter(|c| blob_key(c) == key)
}

/// Where a leg records what it staged of `image` for the plan `plan_id`.
pub fn staged_result_key(plan_id: &str, image: &str) -> String {
    format!("{STAGED_PREFIX}{plan_id}/{image}.json")
}

/// The folder of a plan's stage results.
pub fn staged_results_prefix(plan_id: &str) -> String {
    format!("{STAGED_PREFIX}{plan_id}/")
}

/// Where a leg that staged `units` of the plan `plan_id` keeps all its results in one object:
/// named by its units, so a re-run of the same leg replaces it. Image names have no `/`, so no
/// image's result is ever under `legs/`.
pub fn leg_results_key(plan_id: &str, units: &[&str]) -> String {
    let mut units = units.to_vec();
    units.sort_unstable();
    units.dedup();
    let digest = Checksum::sha256(units.join("\n").as_bytes());
    format!(
        "{}{LEG_RESULTS_FOLDER}{}.json",
        staged_results_prefix(plan_id),
        digest.hex()
    )
}

/// Inside a plan's folder of stage results: where its legs' results are.
pub const LEG_RESULTS_FOLDER: &str = "legs/";

/// What a key inside a plan's folder of stage results holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedKey<'k> {
    /// One image's result (`<image>.json`).
    Result {
        image: &'k str,
    },
    /// One leg's results (`legs/<digest>.json`).
    LegResults,
    Other,
}

/// What a key under `.labctl/staged/` holds, whichever plan's.
pub fn any_staged_key(key: &str) -> StagedKey<'_> {
    match key
        .strip_prefix(STAGED_PREFIX)
        .and_then(|k| k.split_once('/'))
    {
        Some((plan, _)) => staged_key(&staged_results_prefix(plan), key),
        None => StagedKey::Other,
    }
}

/// What `key` holds, given the plan's folder of stage results `prefix`.
pub fn staged_key<'k>(prefix: &str, key: &'k str) -> StagedKey<'k> {
    let Some(name) = key
        .strip_prefix(prefix)
        .and_then(|k| k.strip_suffix(".json"))
    else {
        return StagedKey::Other;
    };
    match name.strip_prefix(LEG_RESULTS_FOLDER) {
        Some(digest) if !digest.is_empty() && !digest.contains('/') => StagedKey::LegResults,
        Some(_) => StagedKey::Other,
        None if !name.is_empty() && !name.contains('/') => StagedKey::Result { image: name },
        None => StagedKey::Other,
    }
}

/// The consumer index, inside `images/`.
pub const SUMS_NAME: &str = "SHA256SUMS";
pub const SIGNATURE_NAME: &str = "SHA256SUMS.minisig";
pub const JSON_NAME: &str = "index.json";
pub const SUMS_KEY: &str = "images/SHA256SUMS";
pub const SIGNATURE_KEY: &str = "images/SHA256SUMS.minisig";
pub const JSON_KEY: &str = "images/index.json";

/// The folder `labctl verify --into` keeps for itself at the top of the served folder (state,
/// lock, temporary and quarantined files): no destination may use it.
pub const SERVED_STATE_DIR: &str = ".labctl";

/// Whether `path` (relative to `images/`) is one of the index's own files.
pub fn is_index_file(path: &str) -> bool {
    matches!(path, SUMS_NAME | SIGNATURE_NAME | JSON_NAME)
}

/// Whether a store key is one of the index's own files.
pub fn is_index_key(key: &str) -> bool {
    key.strip_prefix(IMAGES_PREFIX).is_some_and(is_index_file)
}

/// Where the bytes with `sha256` of the image at `destination` are kept once replaced.
pub fn history_key(destination: &str, sha256: &Checksum) -> String {
    format!("{HISTORY_PREFIX}{destination}/{}", sha256.hex())
}

pub fn object_key(destination: &str) -> String {
    format!("{IMAGES_PREFIX}{destination}")
}

pub fn record_key(destination: &str) -> String {
    format!("{METADATA_PREFIX}{destination}.json")
}

/// The destination a record key belongs to (`metadata/a/b.raw.json` → `a/b.raw`); `None` for
/// anything else under `metadata/` (a stray `metadata/..json` is not a record of `images/.`).
pub fn destination_of_record_key(key: &str) -> Option<&str> {
    let destination = key.strip_prefix(METADATA_PREFIX)?.strip_suffix(".json")?;
    check_relative_key(destination).ok().map(|()| destination)
}

/// Object keys and artifact paths: relative, no `..`, no empty segments.
pub fn check_relative_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("is empty");
    }
    if key.starts_with('/') {
        return Err("must not start with `/`");
    }
    if key.contains('\\') {
        return Err("must use `/` as separator");
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("has an empty path segment"),
            "." | ".." => return Err("must not contain `.` or `..` segments"),
            _ => {}
        }
    }
    if key.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_destination() {
        let sha = Checksum::sha256(b"x");
        assert_eq!(object_key("talos/a.raw"), "images/talos/a.raw");
        assert_eq!(record_key("talos/a.raw"), "metadata/talos/a.raw.json");
        assert_eq!(
            history_key("talos/a.raw", &sha),
            format!("history/talos/a.raw/{}", sha.hex())
        );
        assert_eq!(
            destination_of_record_key("metadata/talos/a.raw.json"),
            Some("talos/a.raw")
        );
        assert_eq!(destination_of_record_key("metadata/..json"), None);
        assert!(is_index_key("images/SHA256SUMS") && !is_index_key("images/a/SHA256SUMS"));
    }

    #[test]
    fn keys_that_escape_are_refused() {
        for bad in ["", "/a", "a\\b", "a//b", "a/../b", "./a", "a\u{7}"] {
            assert!(check_relative_key(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative_key("talos/v1.9/a.raw").is_ok());
    }

    #[test]
    fn what_a_plans_folder_of_stage_results_holds() {
        let prefix = staged_results_prefix("p1");
        let leg = leg_results_key("p1", &["b", "a", "b"]);
        assert_eq!(
            leg,
            leg_results_key("p1", &["a", "b"]),
            "named by its units"
        );
        assert_ne!(leg, leg_results_key("p1", &["a"]));
        assert!(leg.starts_with(".labctl/staged/p1/legs/"));
        assert_eq!(staged_key(&prefix, &leg), StagedKey::LegResults);
        assert_eq!(
            staged_key(&prefix, &staged_result_key("p1", "talos-1.9")),
            StagedKey::Result { image: "talos-1.9" }
        );
        for other in [
            ".labctl/staged/p1/.json",
            ".labctl/staged/p1/a/b.json",
            ".labctl/staged/p1/legs/.json",
            ".labctl/staged/p1/legs/a/b.json",
            ".labctl/staged/p1/a.txt",
            ".labctl/staged/p2/a.json",
        ] {
            assert_eq!(staged_key(&prefix, other), StagedKey::Other, "{other}");
        }
        assert_eq!(any_staged_key(&leg), StagedKey::LegResults);
        assert_eq!(
            any_staged_key(".labctl/staged/p2/a.json"),
            StagedKey::Result { image: "a" }
        );
        assert_eq!(any_staged_key(".labctl/staged/a.json"), StagedKey::Other);
    }
}
