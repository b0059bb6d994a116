//! Checking a synced copy of `images/` (the NAS's) against its consumer index, offline: the
//! signature first, then every listed file's size and sha256, then files nobody listed.
//!
//! Files are streamed through a fixed buffer on a few threads, so memory stays bounded whatever
//! the images' sizes.

use std::borrow::Cow;

use labctl_core::hint::Hint;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::local_file::{self, ReadError, Symlinks};
use crate::pipeline::hash::Hasher;
use labctl_core::checksum::Checksum;
use labctl_core::consumer_index::{
    self, IndexDocument, SumsLine, JSON_NAME, MAX_INDEX_BYTES, SIGNATURE_NAME, SUMS_NAME,
};

/// Version of the `labctl verify --json` report. Additive changes bump the minor version.
pub const FORMAT_VERSION: &str = "1.1";

/// Directories a Synology volume keeps beside synced files (thumbnails, recycle bin, snapshots,
/// Cloud Sync's scratch space): not part of the copy, never reported.
pub const IGNORED_DIRS: [&str; 4] = [
    "@eaDir",
    "#recycle",
    "#snapshot",
    ".SynologyWorkingDirectory",
];

const READ_BUFFER: usize = 256 * 1024;
const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Ok,
    Missing,
    SizeDiffers,
    ContentDiffers,
    Unreadable,
    Unlisted,
    /// `index.json` says something about the path that `SHA256SUMS` or the file does not.
    IndexDiffers,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Missing => "missing",
            Verdict::SizeDiffers => "size-differs",
            Verdict::ContentDiffers => "content-differs",
            Verdict::Unreadable => "unreadable",
            Verdict::Unlisted => "unlisted",
            Verdict::IndexDiffers => "index-differs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileResult {
    /// Relative to the directory, `/`-separated.
    pub path: String,
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_size: Option<u64>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureStatus {
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_comment: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub format_version: String,
    pub labctl_version: String,
    pub dir: String,
    pub signature: SignatureStatus,
    /// Whether `index.json` gave the expected sizes.
    pub sizes_known: bool,
    pub summary: BTreeMap<String, usize>,
    /// Listed files in `SHA256SUMS` order, then unlisted files by path, then what `index.json`
    /// gets wrong (about itself, or about a path).
    pub files: Vec<FileResult>,
}

impl Report {
    pub fn problems(&self) -> usize {
        self.files
            .iter()
            .filter(|f| f.verdict != Verdict::Ok)
            .count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("`{0}` is not a directory")]
    NotADirectory(String),
    #[error(
        "`{path}` is missing: this is not a synced copy of images/, or the sync has not finished"
    )]
    NoSums { path: String },
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is larger than {limit} bytes: not an index labctl wrote")]
    TooLarge { path: String, limit: u64 },
    #[error("`{path}` is not a valid SHA256SUMS file")]
    BadSums {
        path: String,
        #[source]
        source: consumer_index::SumsError,
    },
    /// The key parser's own message (it names the key already).
    #[error("{0}")]
    BadKey(String),
    #[error("`{path}` is missing, but a public key was given: the index is not signed")]
    NoSignature { path: String },
    #[error("`{path}` is not a minisign signature: {message}")]
    UnreadableSignature { path: String, message: String },
    #[error("`{path}` was made by key {signed_by}, not by {key_id}")]
    WrongKey {
        path: String,
        key_id: String,
        signed_by: String,
    },
    #[error("`{path}` does not verify with key {key_id}: SHA256SUMS is not what was signed")]
    BadSignature { path: String, key_id: String },
    #[error("cannot read the public key file `{path}`")]
    KeyFile {
        path: String,
        #[source]
        source: ReadError,
    },
    #[error("`{path}` holds no minisign public key")]
    NoKeyInFile { path: String },
}

/// Public key files hold a comment line and a key; reading stops here.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The key in a minisign `.pub` file (comment line, key line) or in a file holding just the key.
/// Any readable file will do: `--public-key-file <(echo "$KEY")` is a pipe.
pub fn read_public_key_file(path: &Path) -> Result<String, VerifyError> {
    let shown = || path.display().to_string();
    let text = read_any(path, MAX_KEY_FILE_BYTES).map_err(|source| VerifyError::KeyFile {
        path: shown(),
        source,
    })?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .map(str::to_string)
        .ok_or_else(|| VerifyError::NoKeyInFile { path: shown() })
}

/// The text of whatever `path` opens (a file, a pipe), refused past `limit` bytes.
fn read_any(path: &Path, limit: u64) -> Result<String, ReadError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::NotFound(e),
        _ => ReadError::Io(e),
    })?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(ReadError::Io)?;
    if text.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(text)
}

impl Hint for VerifyError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            VerifyError::NoSums { .. } => Some(
                "point labctl verify at the folder the NAS syncs the bucket's images/ into; labctl apply writes SHA256SUMS there",
            ),
            VerifyError::BadSignature { .. } => Some(
                "if a sync is running, wait for it to finish and verify again; otherwise the index was altered after labctl signed it",
            ),
            VerifyError::WrongKey { .. } => Some(
                "pass the public key from the manifest's spec.index.signing.minisign.publicKey",
            ),
            VerifyError::NoSignature { .. } => Some(
                "configure spec.index.signing in the manifest and apply again, or verify without --public-key",
            ),
            _ => None,
        };
        hint.map(Cow::Borrowed)
    }
}

pub struct Options {
    pub dir: PathBuf,
    /// The lab's minisign public key (base64); with it, an unsigned index is an error.
    pub public_key: Option<String>,
    pub jobs: usize,
}

/// Reads at most `limit` bytes of `path`; `None` when it does not exist.
pub(crate) fn read_capped(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, VerifyError> {
    let display = path.display().to_string();
    match local_file::read(path, limit, Symlinks::Follow) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(ReadError::NotFound(_)) => Ok(None),
        Err(ReadError::TooLarge { limit }) => Err(VerifyError::TooLarge {
            path: display,
            limit,
        }),
        Err(e @ ReadError::NotAFile) => Err(VerifyError::Read {
            path: display,
            source: std::io::Error::other(e),
        }),
        Err(ReadError::Io(source)) => Err(VerifyError::Read {
            path: display,
            source,
        }),
    }
}

/// The signature's status, and the bytes of `SHA256SUMS.minisig` that verified (so that a
/// copy made afterwards is of exactly those bytes, whatever a sync does to the file meanwhile).
pub(crate) fn check_signature(
    dir: &Path,
    sums: &[u8],
    public_key: &str,
) -> Result<(SignatureStatus, Vec<u8>), VerifyError> {
    let key = labctl_core::signature::MinisignKey::parse(public_key)
        .map_err(|e| VerifyError::BadKey(e.to_string()))?;
    let path = dir.join(SIGNATURE_NAME);
    let display = path.display().to_string();
    let bytes =
        read_capped(&path, MAX_SIGNATURE_BYTES)?.ok_or_else(|| VerifyError::NoSignature {
            path: display.clone(),
        })?;
    let text = String::from_utf8(bytes.clone()).map_err(|_| VerifyError::UnreadableSignature {
        path: display.clone(),
        message: "not text".into(),
    })?;
    let sig = minisign_verify::Signature::decode(&text).map_err(|e| {
        VerifyError::UnreadableSignature {
            path: display.clone(),
            message: e.to_string(),
        }
    })?;
    match key.key.verify(sums, &sig, false) {
        Ok(()) => Ok((
            SignatureStatus {
                verified: true,
                key_id: Some(key.key_id),
                trusted_comment: Some(sig.trusted_comment().to_string()),
            },
            bytes,
        )),
        Err(minisign_verify::Error::UnexpectedKeyId) => Err(VerifyError::WrongKey {
            path: display,
            key_id: key.key_id,
            signed_by: signer_of(&text),
        }),
        Err(_) => Err(VerifyError::BadSignature {
            path: display,
            key_id: key.key_id,
        }),
    }
}

/// The key ID a `.minisig` names (bytes 2..10 of its second line), as minisign prints it.
fn signer_of(text: &str) -> String {
    use base64::Engine;
    text.lines()
        .nth(1)
        .and_then(|l| {
            base64::engine::general_purpose::STANDARD
                .decode(l.trim())
                .ok()
        })
        .filter(|raw| raw.len() >= 10)
        .map(|raw| {
            raw[2..10]
                .iter()
                .rev()
                .map(|b| format!("{b:02X}"))
                .collect()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the whole check. `Err` means verify could not do its job (exit 1); problems with the
/// copy are in the report (exit 2).
pub fn run(
    options: &Options,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Report, VerifyError> {
    let dir = &options.dir;
    if !dir.is_dir() {
        return Err(VerifyError::NotADirectory(dir.display().to_string()));
    }
    let sums_path = dir.join(SUMS_NAME);
    let sums =
        read_capped(&sums_path, MAX_INDEX_BYTES as u64)?.ok_or_else(|| VerifyError::NoSums {
            path: sums_path.display().to_string(),
        })?;
    let signature = match &options.public_key {
        Some(key) => check_signature(dir, &sums, key)?.0,
        None => SignatureStatus {
            verified: false,
            key_id: None,
            trusted_comment: None,
        },
    };
    let listed =
        consumer_index::parse_sha256sums(&sums).map_err(|source| VerifyError::BadSums {
            path: sums_path.display().to_string(),
            source,
        })?;

    // index.json is not signed: it must agree with SHA256SUMS (a consumer such as Tinkerbell
    // reads its sha256s), and its sizes are used only where it does.
    let (index, mut index_findings) = read_index_json(dir, &listed);
    let sizes: BTreeMap<String, u64> = listed
        .iter()
        .filter_map(|l| {
            index
                .get(&l.path)
                .filter(|(sha, _)| sha == l.sha256.hex())
                .map(|(_, size)| (l.path.clone(), *size))
        })
        .collect();

    let mut files = check_listed(dir, &listed, &sizes, options.jobs.max(1), progress);
    let known: BTreeSet<&str> = listed.iter().map(|l| l.path.as_str()).collect();
    let mut unlisted = Vec::new();
    walk(dir, dir, &mut unlisted).map_err(|source| VerifyError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    unlisted.retain(|(p, _)| !known.contains(p.as_str()) && !consumer_index::is_index_file(p));
    unlisted.sort();
    for (path, size) in unlisted {
        files.push(FileResult {
            path,
            verdict: Verdict::Unlisted,
            expected_sha256: None,
            actual_sha256: None,
            expected_size: None,
            actual_size: Some(size),
            detail: "present, but not listed in SHA256SUMS".into(),
        });
    }
    // A file that matches SHA256SUMS but not index.json's size: the index is what is wrong.
    for f in &files {
        if let (Verdict::Ok, Some(expected), Some(actual)) =
            (f.verdict, f.expected_size, f.actual_size)
        {
            if expected != actual {
                index_findings.push(index_differs(
                    &f.path,
                    format!("index.json says {expected} bytes; the file, which matches SHA256SUMS, has {actual}"),
                ));
            }
        }
    }
    files.extend(index_findings);
    let mut summary = BTreeMap::new();
    for f in &files {
        *summary.entry(f.verdict.name().to_string()).or_insert(0) += 1;
    }
    Ok(Report {
        format_version: FORMAT_VERSION.into(),
        labctl_version: env!("CARGO_PKG_VERSION").into(),
        dir: dir.display().to_string(),
        signature,
        sizes_known: !sizes.is_empty(),
        summary,
        files,
    })
}

fn index_differs(path: &str, detail: String) -> FileResult {
    FileResult {
        path: path.to_string(),
        verdict: Verdict::IndexDiffers,
        expected_sha256: None,
        actual_sha256: None,
        expected_size: None,
        actual_size: None,
        detail,
    }
}

/// `index.json` as `path -> (sha256 hex, size)`.
type IndexedPaths = BTreeMap<String, (String, u64)>;

/// `index.json`, and what it gets wrong: missing, unreadable, or disagreeing with
/// `SHA256SUMS` about a path. Problems with it are findings, never a failure to verify.
fn read_index_json(dir: &Path, listed: &[SumsLine]) -> (IndexedPaths, Vec<FileResult>) {
    let mut findings = Vec::new();
    let finding = |verdict, detail: String| FileResult {
        path: JSON_NAME.to_string(),
        verdict,
        expected_sha256: None,
        actual_sha256: None,
        expected_size: None,
        actual_size: None,
        detail,
    };
    let bytes = match read_capped(&dir.join(JSON_NAME), MAX_INDEX_BYTES as u64) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            findings.push(finding(
                Verdict::Missing,
                "labctl writes it beside SHA256SUMS (a sync in progress, or a partial copy)".into(),
            ));
            return (BTreeMap::new(), findings);
        }
        Err(e) => {
            findings.push(finding(Verdict::Unreadable, e.to_string()));
            return (BTreeMap::new(), findings);
        }
    };
    let doc = match serde_json::from_slice::<IndexDocument>(&bytes) {
        Ok(doc) => doc,
        Err(e) => {
            findings.push(finding(
                Verdict::Unreadable,
                format!("not an index labctl wrote: {e}"),
            ));
            return (BTreeMap::new(), findings);
        }
    };
    let index: IndexedPaths = doc
        .images
        .into_iter()
        .map(|e| (e.path, (e.sha256, e.size)))
        .collect();
    let sums: BTreeMap<&str, &str> = listed
        .iter()
        .map(|l| (l.path.as_str(), l.sha256.hex()))
        .collect();
    for (path, sha) in &sums {
        match index.get(*path) {
            None => findings.push(index_differs(
                path,
                "listed in SHA256SUMS, but not in index.json".into(),
            )),
            Some((indexed, _)) if indexed != sha => findings.push(index_differs(
                path,
                format!("index.json says sha256 {indexed}, SHA256SUMS says {sha}"),
            )),
            Some(_) => {}
        }
    }
    for path in index.keys() {
        if !sums.contains_key(path.as_str()) {
            findings.push(index_differs(
                path,
                "listed in index.json, but not in SHA256SUMS".into(),
            ));
        }
    }
    (index, findings)
}

/// Hashes the listed files on `jobs` threads; results keep the listing's order.
fn check_listed(
    dir: &Path,
    listed: &[SumsLine],
    sizes: &BTreeMap<String, u64>,
    jobs: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Vec<FileResult> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<FileResult>>> = Mutex::new(vec![None; listed.len()]);
    let progress = Mutex::new(progress);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(listed.len().max(1)) {
            scope.spawn(|| {
                let mut buf = vec![0u8; READ_BUFFER];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(line) = listed.get(i) else { break };
                    let result = check_file(dir, line, sizes.get(&line.path).copied(), &mut buf);
                    results.lock().unwrap()[i] = Some(result);
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    (progress.lock().unwrap())(n, listed.len());
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every listed file is checked"))
        .collect()
}

fn check_file(dir: &Path, line: &SumsLine, size: Option<u64>, buf: &mut [u8]) -> FileResult {
    let mut result = FileResult {
        path: line.path.clone(),
        verdict: Verdict::Ok,
        expected_sha256: Some(line.sha256.hex().to_string()),
        actual_sha256: None,
        expected_size: size,
        actual_size: None,
        detail: String::new(),
    };
    let path = dir.join(&line.path);
    // Judged before opening: opening a FIFO someone left at a listed path would block forever.
    let actual_size = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            result.verdict = Verdict::Unreadable;
            result.detail = "not a regular file".into();
            return result;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            result.verdict = Verdict::Missing;
            result.detail = "listed in SHA256SUMS, but not in the directory".into();
            return result;
        }
        Err(e) => {
            result.verdict = Verdict::Unreadable;
            result.detail = format!("cannot read its metadata: {e}");
            return result;
        }
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            result.verdict = Verdict::Unreadable;
            result.detail = format!("cannot open: {e}");
            return result;
        }
    };
    result.actual_size = Some(actual_size);
    let mut hasher = Hasher::new(labctl_core::checksum::Algorithm::Sha256);
    let mut reader = file;
    loop {
        match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                result.verdict = Verdict::Unreadable;
                result.detail = format!("read failed: {e}");
                return result;
            }
        }
    }
    let actual: Checksum = hasher.finish();
    result.actual_sha256 = Some(actual.hex().to_string());
    if actual == line.sha256 {
        return result; // whatever index.json says about its size (reported on its own)
    }
    match size.filter(|&expected| expected != actual_size) {
        Some(expected) => {
            result.verdict = Verdict::SizeDiffers;
            result.detail = format!(
                "{actual_size} bytes, {expected} expected{}",
                if actual_size < expected {
                    " (a sync in progress, or a truncated copy)"
                } else {
                    ""
                }
            );
        }
        None => {
            result.verdict = Verdict::ContentDiffers;
            result.detail = "the sha256 of the file is not the listed one".into();
        }
    }
    result
}

/// Every regular file below `root` as `(relative path, size)`, without following symlinked
/// directories and skipping the NAS's own bookkeeping directories.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            // The served folder's own state, when verify checks a folder `--into` fills.
            let served_state = dir == root && name == consumer_index::SERVED_STATE_DIR;
            if IGNORED_DIRS.contains(&name.as_ref()) || served_state {
                continue;
            }
            walk(root, &entry.path(), out)?;
        } else {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("walk stays below root");
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((rel, size));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
