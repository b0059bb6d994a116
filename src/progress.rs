//! How long-running work reports progress: bars on a terminal, plain periodic lines in CI logs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use labctl_transfer::progress::{Done, Failed, Outcome, Progress, Silent};

/// Bars for a terminal on stderr (outside CI), lines otherwise.
fn wants_bars() -> bool {
    console::Term::stderr().is_term() && !crate::settings::env().ci
}

/// Chooses bars for a terminal on stderr, lines otherwise.
pub fn for_stderr() -> Box<dyn Progress> {
    if wants_bars() {
        Box::new(Bars::new())
    } else {
        Box::new(Lines::new(Duration::from_secs(30)))
    }
}

/// Progress of a count of things (records read while reading state): nothing while it is
/// quick, then a bar on a terminal or a line every 30 s in a log.
pub struct Counter {
    what: &'static str,
    started: Instant,
    bar: Option<ProgressBar>,
    /// When the last line was printed (logs).
    printed: Mutex<Instant>,
}

/// How long a count runs before it is shown.
const COUNTER_DELAY: Duration = Duration::from_secs(1);
const COUNTER_LINES_EVERY: Duration = Duration::from_secs(30);

impl Counter {
    pub fn new(what: &'static str) -> Counter {
        let bar = wants_bars().then(|| {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden()).with_style(
                ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            )
        });
        if let Some(bar) = &bar {
            bar.set_message(what);
        }
        let now = Instant::now();
        Counter {
            what,
            started: now,
            bar,
            printed: Mutex::new(now),
        }
    }

    pub fn update(&self, done: usize, total: usize) {
        let show = self.started.elapsed() >= COUNTER_DELAY && done < total;
        match &self.bar {
            Some(bar) => {
                if show && bar.is_hidden() {
                    // The rate counts from now, not from the quiet second before.
                    bar.reset_elapsed();
                    bar.reset_eta();
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                }
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            None if show => {
                let mut printed = self.printed.lock().unwrap();
                if printed.elapsed() >= COUNTER_LINES_EVERY {
                    *printed = Instant::now();
                    eprintln!("{}: {done}/{total}", self.what);
                }
            }
            None => {}
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    pub fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl Progress for Bars {
    fn line(&self, image: &str, line: &str) {
        let _ = self.multi.println(format!("[{image}] {line}"));
    }

    fn start(&self, image: &str, what: &str, total: Option<u64>) {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::no_length().with_style(
                ProgressStyle::with_template("{prefix:.bold} {msg} {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            ),
        };
        let bar = self.multi.add(bar);
        bar.set_prefix(image.to_string());
        bar.set_message(what.to_string());
        self.bars.lock().unwrap().insert(image.to_string(), bar);
    }

    fn advance(&self, image: &str, bytes: u64) {
        if let Some(bar) = self.bars.lock().unwrap().get(image) {
            bar.inc(bytes);
        }
    }

    fn restart(&self, image: &str, total: Option<u64>, why: &str) {
        if let Some(bar) = self.bars.lock().unwrap().get(image) {
            bar.set_position(0);
            if let Some(t) = total {
                bar.set_length(t);
            }
            bar.println(format!("{image}: {why}"));
        }
    }

    fn finish(&self, image: &str, outcome: &Outcome) {
        if let Some(bar) = self.bars.lock().unwrap().remove(image) {
            bar.finish_with_message(outcome.status());
        }
    }
}

struct LineState {
    done: u64,
    total: Option<u64>,
    started: Instant,
    last_line: Instant,
    last_tenth: u64,
}

/// A line per image at start, at every 10 % (or every `interval` when the size is unknown or
/// progress is slow), and at the end: readable in CI logs, where bars print nothing useful.
pub struct Lines {
    interval: Duration,
    state: Mutex<HashMap<String, LineState>>,
    /// In GitHub Actions, each image's build output is kept and printed as one collapsible
    /// group when the image finishes, so parallel builds do not interleave.
    grouped: Option<Mutex<HashMap<String, Vec<String>>>>,
}

impl Lines {
    pub fn new(interval: Duration) -> Lines {
        Lines {
            interval,
            state: Mutex::new(HashMap::new()),
            grouped: crate::github::active().then(|| Mutex::new(HashMap::new())),
        }
    }
}

fn mib(bytes: u64) -> String {
    crate::units::human_size(bytes)
}

impl Progress for Lines {
    fn line(&self, image: &str, line: &str) {
        match &self.grouped {
            Some(groups) => groups
                .lock()
                .unwrap()
                .entry(image.to_string())
                .or_default()
                .push(format!("[{image}] {line}")),
            None => eprintln!("[{image}] {line}"),
        }
    }

    fn start(&self, image: &str, what: &str, total: Option<u64>) {
        let now = Instant::now();
        eprintln!(
            "{image}: {what}{}",
            total.map(|t| format!(" ({})", mib(t))).unwrap_or_default()
        );
        self.state.lock().unwrap().insert(
            image.to_string(),
            LineState {
                done: 0,
                total,
                started: now,
                last_line: now,
                last_tenth: 0,
            },
        );
    }

    fn advance(&self, image: &str, bytes: u64) {
        let mut states = self.state.lock().unwrap();
        let Some(s) = states.get_mut(image) else {
            return;
        };
        s.done += bytes;
        let tenth = s
            .total
            .filter(|t| *t > 0)
            .map(|t| s.done * 10 / t)
            .unwrap_or(0);
        if tenth > s.last_tenth || s.last_line.elapsed() >= self.interval {
            s.last_tenth = tenth;
            s.last_line = Instant::now();
            let rate =
                s.done as f64 / s.started.elapsed().as_secs_f64().max(0.001) / (1024.0 * 1024.0);
            match s.total {
                Some(t) if t > 0 => eprintln!(
                    "{image}: {} of {} ({}%), {rate:.1} MiB/s",
                    mib(s.done),
                    mib(t),
                    s.done * 100 / t
                ),
                _ => eprintln!("{image}: {}, {rate:.1} MiB/s", mib(s.done)),
            }
        }
    }

    fn restart(&self, image: &str, total: Option<u64>, why: &str) {
        eprintln!("{image}: {why}");
        if let Some(s) = self.state.lock().unwrap().get_mut(image) {
            s.done = 0;
            s.total = total;
            s.last_tenth = 0;
        }
    }

    fn finish(&self, image: &str, outcome: &Outcome) {
        let message = outcome.status();
        let state = self.state.lock().unwrap().remove(image);
        let took = state
            .map(|s| format!(" in {:.1}s", s.started.elapsed().as_secs_f64()))
            .unwrap_or_default();
        match &self.grouped {
            Some(groups) => {
                let lines = groups.lock().unwrap().remove(image).unwrap_or_default();
                crate::github::group(&format!("{image}: {message}{took}"), &lines);
            }
            None => eprintln!("{image}: {message}{took}"),
        }
    }
}
