//! What the library crates have to say that is neither an error nor a result: cleanup that
//! failed (the next run does it) and a note on slow work. They are reported to the sink the
//! program installs ([`set_sink`]), which renders them; a library never prints.

use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An unfinished multipart upload could not be aborted: it stays invisible (and billed)
    /// until the next apply that takes the lock aborts it.
    AbortFailed { key: String, error: String },
    /// An upload dropped where no runtime was left to abort it on.
    UploadLeft { key: String },
    /// A lock dropped without a release could not be released (`error`), or not even tried.
    LockNotReleased { id: String, error: Option<String> },
    /// A lock this run had just created, to test the store, could not be removed again.
    LockNotRemoved { error: String },
    /// The record snapshot (an optimization for the next refresh) could not be saved.
    SnapshotNotSaved { error: String },
    /// A published object is read back once for the sha256 its record lacks.
    ReadingBack {
        image: String,
        key: String,
        size: Option<u64>,
    },
}

impl Event {
    /// Something went wrong that a person may want to know about (else it is progress).
    pub fn is_warning(&self) -> bool {
        !matches!(self, Event::ReadingBack { .. })
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::AbortFailed { key, error } => write!(
                f,
                "the unfinished upload of `{key}` could not be aborted (the next apply aborts it): {error}"
            ),
            Event::UploadLeft { key } => write!(
                f,
                "the unfinished upload of `{key}` was left (no runtime to abort it on); the next apply aborts it"
            ),
            Event::LockNotReleased { id, error: Some(e) } => write!(
                f,
                "could not release the store lock {id}: {e}; `labctl force-unlock {id}` removes it"
            ),
            Event::LockNotReleased { id, error: None } => write!(
                f,
                "the store lock {id} was not released; `labctl force-unlock {id}` removes it"
            ),
            Event::LockNotRemoved { error } => {
                write!(f, "could not remove the lock just taken: {error}")
            }
            Event::SnapshotNotSaved { error } => {
                write!(f, "could not save the record snapshot: {error}")
            }
            Event::ReadingBack { image, key, size } => {
                write!(f, "{image}: reading {key}")?;
                if let Some(s) = size {
                    write!(f, " ({})", labctl_core::units::human_size(*s))?;
                }
                f.write_str(" back once for its sha256…")
            }
        }
    }
}

type Sink = Box<dyn Fn(&Event) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Where events go from now on; set once, by the program, at its start.
pub fn set_sink(sink: impl Fn(&Event) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

/// Reports `event` to the installed sink (none: a library used on its own says nothing).
pub fn report(event: Event) {
    if let Some(sink) = SINK.get() {
        sink(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_say_what_happened_and_what_to_do() {
        let left = Event::LockNotReleased {
            id: "ab12".into(),
            error: None,
        };
        assert!(left.is_warning());
        assert_eq!(
            left.to_string(),
            "the store lock ab12 was not released; `labctl force-unlock ab12` removes it"
        );
        let reading = Event::ReadingBack {
            image: "iso".into(),
            key: "images/a.iso".into(),
            size: Some(2048),
        };
        assert!(!reading.is_warning());
        assert!(reading
            .to_string()
            .starts_with("iso: reading images/a.iso ("));
    }
}
