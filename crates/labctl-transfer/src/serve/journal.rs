//! The served state's journal, `SERVED/.labctl/journal`: what changed about each placed file
//! since `state.json` was last written whole, one JSON line per change, appended and fsynced
//! once per batch of placements. Writing the whole state after every file made a first run
//! over N files cost O(N²); with the journal a run writes O(N) in all: its batches' lines, and
//! the whole state at its start (when a killed run left a journal) and at its end.
//!
//! Each line sets a path's record (or removes it) and carries a sequence number; the state file
//! says up to which number it already holds. A line at or below that number is skipped, so a
//! run killed between writing the state and emptying the journal replays nothing twice.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::{Placed, ServedState, StateError};

pub const FILE_NAME: &str = "journal";
/// One line holds one record (an index entry with its URL and version strings): anything
/// longer was not written by labctl.
const MAX_LINE_BYTES: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
struct Line {
    seq: u64,
    path: String,
    /// `None`: labctl no longer holds the path.
    placed: Option<Placed>,
}

/// A [`Line`] as written, borrowed from the state.
#[derive(Serialize)]
struct LineRef<'a> {
    seq: u64,
    path: &'a str,
    placed: Option<&'a Placed>,
}

/// The open journal of one run.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
    /// Sequence number of the last line written (or folded into the state).
    seq: u64,
    /// A failed append may have left part of a line: nothing more is appended after it, so
    /// that a torn line can only ever be the last one.
    broken: bool,
}

impl Journal {
    /// Applies the journal a previous run left to `state`. Returns the journal, ready to
    /// append, and whether anything was applied (then the caller writes the state whole and
    /// empties the journal, so this run's lines start from a clean file).
    pub fn replay(
        state_dir: &Path,
        state: &mut ServedState,
    ) -> Result<(Journal, bool), StateError> {
        let path = state_dir.join(FILE_NAME);
        let display = path.display().to_string();
        let mut journal = Journal {
            path,
            file: None,
            seq: state.journaled,
            broken: false,
        };
        let file = match File::open(&journal.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((journal, false)),
            Err(source) => {
                return Err(StateError::ReadJournal {
                    path: display,
                    source,
                })
            }
        };
        let mut reader = BufReader::new(file);
        let mut applied = false;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = std::io::Read::take(&mut reader, MAX_LINE_BYTES)
                .read_until(b'\n', &mut buf)
                .map_err(|source| StateError::ReadJournal {
                    path: display.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            // A line without its newline (or past the bound) is the one a kill interrupted:
            // it was never fsynced as a whole, so nothing after it was either.
            if buf.last() != Some(&b'\n') {
                break;
            }
            let Ok(line) = serde_json::from_slice::<Line>(&buf) else {
                break;
            };
            if !ServedState::is_placeable(&line.path) {
                return Err(StateError::Corrupt {
                    path: display,
                    message: format!("`{}` is not a path labctl places", line.path),
                });
            }
            if line.seq <= state.journaled {
                continue;
            }
            match line.placed {
                Some(p) => state.files.insert(line.path, p),
                None => state.files.remove(&line.path),
            };
            journal.seq = journal.seq.max(line.seq);
            applied = true;
        }
        state.journaled = journal.seq;
        Ok((journal, applied))
    }

    /// The sequence number the state holds once written whole now.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Appends what `files` now holds for each of `paths` and makes it durable (one fsync),
    /// streamed through a buffer: a batch of thousands of files is never one string in memory.
    pub fn append(
        &mut self,
        paths: &[String],
        files: &BTreeMap<String, Placed>,
    ) -> Result<(), StateError> {
        if paths.is_empty() {
            return Ok(());
        }
        let error = |path: &Path, source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        if self.broken {
            return Err(error(
                &self.path,
                std::io::Error::other("an earlier write to the journal failed"),
            ));
        }
        let mut seq = self.seq;
        let written = self.file().and_then(|f| {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, &mut *f);
            for path in paths {
                seq += 1;
                let line = LineRef {
                    seq,
                    path,
                    placed: files.get(path),
                };
                serde_json::to_writer(&mut w, &line)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            drop(w);
            f.sync_data()
        });
        match written {
            Ok(()) => {
                self.seq = seq;
                Ok(())
            }
            Err(source) => {
                self.broken = true;
                Err(error(&self.path, source))
            }
        }
    }

    /// Empties the journal once the state file holds everything in it.
    pub fn clear(&mut self) -> Result<(), StateError> {
        self.file = None;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Write {
                path: self.path.display().to_string(),
                source: e,
            }),
            _ => {
                self.broken = false;
                Ok(())
            }
        }
    }

    fn file(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let file = File::options().create(true).append(true).open(&self.path)?;
            // The journal's own folder entry, once, when it is created.
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use labctl_core::checksum::Checksum;
    use labctl_core::consumer_index::IndexEntry;

    fn placed(sha: &str) -> Placed {
        Placed {
            sha256: sha.into(),
            size: 1,
            identity: None,
            placing: None,
            entry: std::sync::Arc::new(IndexEntry {
                name: "a".into(),
                path: "a".into(),
                size: 1,
                sha256: sha.into(),
                checksum: Checksum::sha256(b"a"),
                source_url: None,
                uploaded_at: None,
                labctl_version: None,
            }),
        }
    }

    fn empty() -> ServedState {
        ServedState {
            format: super::super::state::FORMAT,
            ..ServedState::default()
        }
    }

    #[test]
    fn changes_replay_in_order_and_a_torn_last_line_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut state = empty();
        let (mut j, applied) = Journal::replay(d.path(), &mut state).unwrap();
        assert!(!applied);
        let mut files = BTreeMap::new();
        files.insert("a".to_string(), placed("1"));
        files.insert("b".to_string(), placed("2"));
        j.append(&["a".into(), "b".into()], &files).unwrap();
        files.remove("a");
        files.insert("c/d".to_string(), placed("3"));
        j.append(&["a".into(), "c/d".into()], &files).unwrap();
        // A kill in the middle of the next append.
        let mut f = File::options()
            .append(true)
            .open(d.path().join(FILE_NAME))
            .unwrap();
        f.write_all(br#"{"seq":5,"path":"e","pla"#).unwrap();
        let mut replayed = empty();
        let (j2, applied) = Journal::replay(d.path(), &mut replayed).unwrap();
        assert!(applied);
        assert_eq!(replayed.files.keys().collect::<Vec<_>>(), vec!["b", "c/d"]);
        assert_eq!(replayed.journaled, 4);
        assert_eq!(j2.seq(), 4);
    }

    #[test]
    fn lines_the_state_already_holds_are_not_replayed() {
        let d = tempfile::tempdir().unwrap();
        let mut state = empty();
        let (mut j, _) = Journal::replay(d.path(), &mut state).unwrap();
        let files = BTreeMap::from([("a".to_string(), placed("1"))]);
        j.append(&["a".into()], &files).unwrap();
        // The state was written whole (holding line 1, and later removing `a`), and the run
        // was killed before it emptied the journal.
        let mut newer = empty();
        newer.journaled = 1;
        let (_, applied) = Journal::replay(d.path(), &mut newer).unwrap();
        assert!(!applied);
        assert!(newer.files.is_empty());
        j.clear().unwrap();
        assert!(!d.path().join(FILE_NAME).exists());
    }

    #[test]
    fn a_path_outside_the_served_folder_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(FILE_NAME),
            format!(
                "{}\n",
                serde_json::to_string(&LineRef {
                    seq: 1,
                    path: "../etc/passwd",
                    placed: Some(&placed("1")),
                })
                .unwrap()
            ),
        )
        .unwrap();
        let err = Journal::replay(d.path(), &mut empty()).unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }
}
