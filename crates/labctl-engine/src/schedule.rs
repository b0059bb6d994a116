//! The scheduler alone: a plan's changes run from the dependency graph's ready queue. A change
//! starts once every dependency in the plan has settled, up to `parallelism` at once, lowest
//! plan index first; whatever its outcome, it then releases its dependents. What running a
//! change means is behind [`RunChange`] (apply's work in `execute`, stand-ins in the tests), so
//! the order, the bounds, failures, panics and signals are tested here without a store.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::anyhow;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::checksum::Checksum;
use crate::context::{ChangeResult, Outcome, Report, Skip};
use crate::graph::{DependencyGraph, ReadyQueue};
use crate::plan::{Action, Change};
use crate::progress::{Causes, Failed, Progress};

/// A job's error with its causes as anyhow keeps them, each still its own type.
#[derive(Debug)]
struct AnyhowCauses(anyhow::Error);

impl Causes for AnyhowCauses {
    fn causes(&self) -> Box<dyn Iterator<Item = &(dyn std::error::Error + 'static)> + '_> {
        Box::new(self.0.chain())
    }
}

/// A job's error as its outcome.
pub(crate) fn failed(error: anyhow::Error) -> Failed {
    Failed::of(AnyhowCauses(error))
}

/// One change's work, as a task of its own.
pub(crate) type Job = Pin<Box<dyn Future<Output = ChangeResult> + Send>>;

/// Runs one change, given the checksums its dependencies finished with (or the plan's).
pub(crate) trait RunChange: Send + Sync + 'static {
    fn run(&self, change: Change, dependencies: BTreeMap<String, Option<Checksum>>) -> Job;
}

pub(crate) struct Settings {
    pub parallelism: usize,
    /// Turns true on a signal: nothing more starts.
    pub cancel: watch::Receiver<bool>,
    pub progress: Arc<dyn Progress>,
}

/// Runs every change of `changes`; the outcomes in plan order.
pub(crate) async fn run(
    changes: &[Change],
    runner: Arc<dyn RunChange>,
    settings: Settings,
) -> Report {
    let mut run = Scheduler::new(changes, runner, settings);
    run.run().await;
    run.report()
}

/// What a finished change offers its dependents.
#[derive(Clone)]
enum Finished {
    Ok(Option<Checksum>),
    Failed,
    /// A signal stopped it (before it started, or while it ran): its dependents are
    /// interrupted too, not failed.
    Interrupted,
}

struct Scheduler<'a> {
    changes: &'a [Change],
    runner: Arc<dyn RunChange>,
    settings: Settings,
    /// `None` when the plan's dependencies form a cycle (a checked plan has none).
    queue: Option<ReadyQueue>,
    graph: Option<DependencyGraph>,
    finished: Vec<Option<Finished>>,
    outcomes: Vec<Option<Outcome>>,
    running: JoinSet<(usize, ChangeResult)>,
    /// Which change a task runs, so that a task that panics fails its image, not the apply.
    task_of: HashMap<tokio::task::Id, usize>,
}

impl<'a> Scheduler<'a> {
    fn new(changes: &'a [Change], runner: Arc<dyn RunChange>, settings: Settings) -> Self {
        let graph = DependencyGraph::build(changes).ok();
        Scheduler {
            changes,
            runner,
            settings,
            queue: graph.as_ref().map(DependencyGraph::ready_queue),
            graph,
            finished: vec![None; changes.len()],
            outcomes: vec![None; changes.len()],
            running: JoinSet::new(),
            task_of: HashMap::new(),
        }
    }

    async fn run(&mut self) {
        if self.queue.is_none() {
            // Nothing could ever start: skip everything rather than wait forever.
            for i in 0..self.changes.len() {
                self.never_finishes(i);
            }
            return;
        }
        loop {
            self.start_ready();
            let Some(joined) = self.running.join_next().await else {
                if self.queue.as_ref().is_some_and(ReadyQueue::is_done) {
                    break;
                }
                // Nothing running and nothing ready, yet not done: cannot happen with an
                // acyclic graph; skip what is left rather than wait forever.
                for i in 0..self.changes.len() {
                    if self.outcomes[i].is_none() {
                        self.never_finishes(i);
                    }
                }
                break;
            };
            self.finish(joined);
        }
    }

    /// Starts (or settles at once) every ready change, within the parallelism.
    fn start_ready(&mut self) {
        while self.running.len() < self.settings.parallelism.max(1) {
            let Some(i) = self.queue.as_mut().and_then(ReadyQueue::pop) else {
                return;
            };
            let change = &self.changes[i];
            let dependencies = self.dependencies(i);
            let interrupted = dependencies
                .iter()
                .any(|&d| matches!(self.finished[d], Some(Finished::Interrupted)));
            let failed_dependency = dependencies
                .into_iter()
                .find(|&d| matches!(self.finished[d], Some(Finished::Failed)));
            if interrupted || *self.settings.cancel.borrow() {
                self.outcomes[i] = Some(Outcome::Skipped(Skip::Interrupted));
                self.settle_quietly(i, Finished::Interrupted);
            } else if let Some(d) = failed_dependency {
                let why = Skip::DependencyFailed(self.changes[d].name.clone());
                self.settle(i, Outcome::Skipped(why), None);
            } else if change.action == Action::NoOp {
                let sum = change.before.as_ref().and_then(|b| b.checksum.clone());
                self.outcomes[i] = Some(Outcome::Unchanged);
                self.settle_quietly(i, Finished::Ok(sum));
            } else {
                self.spawn(i);
            }
        }
    }

    /// Direct dependencies of change `i` that are in the plan.
    fn dependencies(&self, i: usize) -> Vec<usize> {
        self.graph
            .as_ref()
            .map(|g| g.dependencies(i))
            .unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let change = self.changes[i].clone();
        // A dependency's checksum as it finished, or as the plan knew it.
        let dep_sums: BTreeMap<String, Option<Checksum>> = change
            .depends_on
            .iter()
            .map(|d| {
                let finished = self
                    .changes
                    .iter()
                    .position(|c| c.name == *d)
                    .and_then(|j| match &self.finished[j] {
                        Some(Finished::Ok(s)) => Some(s.clone()),
                        _ => None,
                    });
                let sum = finished.unwrap_or_else(|| {
                    change
                        .after
                        .as_ref()
                        .and_then(|a| a.dependencies.get(d).cloned().flatten())
                });
                (d.clone(), sum)
            })
            .collect();
        let job = self.runner.run(change, dep_sums);
        let handle = self.running.spawn(async move { (i, job.await) });
        self.task_of.insert(handle.id(), i);
    }

    fn finish(&mut self, joined: Result<(usize, ChangeResult), tokio::task::JoinError>) {
        let (i, result) = match joined {
            Ok(done) => done,
            Err(e) => {
                let Some(&i) = self.task_of.get(&e.id()) else {
                    return;
                };
                (
                    i,
                    Err(anyhow!(
                        "labctl failed internally while working on it ({}); nothing partial is visible, and the next apply retries it",
                        if e.is_panic() { "a panic" } else { "cancelled" }
                    )),
                )
            }
        };
        match result {
            Ok((message, checksum)) => self.settle(i, Outcome::Done(message), Some(checksum)),
            Err(e) => {
                // Stopped by the signal while it ran: its dependents are interrupted, not
                // skipped for a failure.
                let interrupted = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<crate::pipeline::PipelineError>(),
                        Some(crate::pipeline::PipelineError::Cancelled)
                    )
                });
                let finished = match interrupted {
                    true => Finished::Interrupted,
                    false => Finished::Failed,
                };
                self.settle_as(i, Outcome::Failed(failed(e)), finished);
            }
        }
    }

    /// Records the outcome, shows it, and releases the change's dependents. `checksum` is
    /// `Some` for a change that succeeded.
    fn settle(&mut self, i: usize, outcome: Outcome, checksum: Option<Option<Checksum>>) {
        let finished = match checksum {
            Some(sum) => Finished::Ok(sum),
            None => Finished::Failed,
        };
        self.settle_as(i, outcome, finished);
    }

    fn settle_as(&mut self, i: usize, outcome: Outcome, finished: Finished) {
        self.settings
            .progress
            .finish(&self.changes[i].name, &outcome);
        self.outcomes[i] = Some(outcome);
        self.settle_quietly(i, finished);
    }

    fn never_finishes(&mut self, i: usize) {
        self.outcomes[i] = Some(Outcome::Skipped(Skip::DependenciesNeverFinish));
        self.settle_quietly(i, Finished::Failed);
    }

    /// Releases the change's dependents without showing anything.
    fn settle_quietly(&mut self, i: usize, finished: Finished) {
        self.finished[i] = Some(finished);
        if let Some(q) = self.queue.as_mut() {
            q.settle(i);
        }
    }

    fn report(self) -> Report {
        Report {
            results: self
                .changes
                .iter()
                .zip(self.outcomes)
                .map(|(c, o)| {
                    (
                        c.name.clone(),
                        c.action,
                        o.unwrap_or(Outcome::Skipped(Skip::NotRun)),
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Done;
    use std::sync::Mutex;

    /// What a stand-in change does when run.
    #[derive(Clone, Copy, PartialEq)]
    enum Act {
        Succeed,
        Fail,
        Panic,
        /// Runs until the signal, then ends as a cancelled transfer does.
        UntilSignalled,
    }

    #[derive(Default)]
    struct Log {
        started: Vec<String>,
        running: usize,
        most_at_once: usize,
    }

    struct StandIn {
        acts: BTreeMap<String, Act>,
        log: Arc<Mutex<Log>>,
        cancel: watch::Receiver<bool>,
    }

    impl RunChange for StandIn {
        fn run(&self, change: Change, _: BTreeMap<String, Option<Checksum>>) -> Job {
            let act = self.acts.get(&change.name).copied().unwrap_or(Act::Succeed);
            let log = self.log.clone();
            let mut cancel = self.cancel.clone();
            Box::pin(async move {
                {
                    let mut l = log.lock().unwrap();
                    l.started.push(change.name.clone());
                    l.running += 1;
                    l.most_at_once = l.most_at_once.max(l.running);
                }
                // Let the others start: what is measured is how many run at once.
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let result = match act {
                    Act::Succeed => Ok((
                        Done::Said("done".into()),
                        Some(Checksum::sha256(change.name.as_bytes())),
                    )),
                    Act::Fail => Err(anyhow!("the vendor answered 500")),
                    Act::Panic => panic!("a bug in {}", change.name),
                    Act::UntilSignalled => {
                        let _ = cancel.wait_for(|c| *c).await;
                        Err(
                            anyhow::Error::new(crate::pipeline::PipelineError::Cancelled)
                                .context("downloading it"),
                        )
                    }
                };
                log.lock().unwrap().running -= 1;
                result
            })
        }
    }

    fn change(name: &str, depends_on: &[&str]) -> Change {
        Change {
            name: name.into(),
            key: format!("images/{name}"),
            record_key: format!("metadata/{name}.json"),
            action: Action::Create,
            reasons: vec![],
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            before: None,
            after: None,
            field_changes: vec![],
            restore: None,
            history: None,
            adopt: None,
        }
    }

    struct Outcomes {
        report: Report,
        log: Log,
    }

    impl Outcomes {
        fn of(&self, name: &str) -> &Outcome {
            &self
                .report
                .results
                .iter()
                .find(|(n, _, _)| n == name)
                .unwrap_or_else(|| panic!("{name} is not in the report"))
                .2
        }
    }

    /// Runs `changes` with stand-ins; `signal_when` sends the signal once that many have
    /// started.
    async fn schedule(
        changes: &[Change],
        acts: &[(&str, Act)],
        parallelism: usize,
        signal_when: Option<usize>,
    ) -> Outcomes {
        let (tx, rx) = watch::channel(false);
        let log = Arc::new(Mutex::new(Log::default()));
        let runner = Arc::new(StandIn {
            acts: acts.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            log: log.clone(),
            cancel: rx.clone(),
        });
        // Held to the end when no test signal is sent: a dropped sender is not a signal.
        let mut tx = Some(tx);
        if let Some(n) = signal_when {
            let (log, tx) = (log.clone(), tx.take().expect("not taken yet"));
            tokio::spawn(async move {
                while log.lock().unwrap().started.len() < n {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                let _ = tx.send(true);
            });
        }
        let settings = Settings {
            parallelism,
            cancel: rx,
            progress: Arc::new(crate::progress::Silent),
        };
        let report = run(changes, runner, settings).await;
        let log = std::mem::take(&mut *log.lock().unwrap());
        Outcomes { report, log }
    }

    #[tokio::test]
    async fn changes_run_after_their_dependencies_within_the_parallelism() {
        let changes: Vec<Change> = (0..8)
            .map(|i| change(&format!("i{i}"), &[]))
            .chain([change("after", &["i3", "i5"])])
            .collect();
        let out = schedule(&changes, &[], 3, None).await;
        assert!(!out.report.failed());
        assert_eq!(out.log.most_at_once, 3, "at most --parallelism at once");
        // Lowest plan index first; the dependent after both of its dependencies.
        assert_eq!(out.log.started[..3], ["i0", "i1", "i2"]);
        assert_eq!(out.log.started.last().map(String::as_str), Some("after"));
        assert!(matches!(out.of("after"), Outcome::Done(_)));
    }

    #[tokio::test]
    async fn a_failure_skips_its_dependents_and_nothing_else() {
        let changes = [
            change("base", &[]),
            change("child", &["base"]),
            change("grandchild", &["child"]),
            change("other", &[]),
        ];
        let out = schedule(&changes, &[("base", Act::Fail)], 2, None).await;
        assert!(matches!(out.of("base"), Outcome::Failed(e) if e.to_string().contains("500")));
        assert_eq!(
            out.of("child"),
            &Outcome::Skipped(Skip::DependencyFailed("base".into()))
        );
        assert_eq!(
            out.of("grandchild"),
            &Outcome::Skipped(Skip::DependencyFailed("child".into()))
        );
        assert!(matches!(out.of("other"), Outcome::Done(_)));
        assert!(out.report.failed());
    }

    #[tokio::test]
    async fn a_change_whose_task_panics_fails_its_image_and_only_it() {
        let changes = [
            change("buggy", &[]),
            change("dependent", &["buggy"]),
            change("fine", &[]),
        ];
        let out = schedule(&changes, &[("buggy", Act::Panic)], 2, None).await;
        assert!(
            matches!(out.of("buggy"), Outcome::Failed(e) if e.to_string().contains("a panic")),
            "{:?}",
            out.of("buggy")
        );
        assert_eq!(
            out.of("dependent"),
            &Outcome::Skipped(Skip::DependencyFailed("buggy".into()))
        );
        assert!(matches!(out.of("fine"), Outcome::Done(_)));
        assert!(out.report.failed(), "the apply must not exit 0");
    }

    #[tokio::test]
    async fn after_a_signal_nothing_starts_and_dependents_are_interrupted_not_failed() {
        let changes = [
            change("downloading", &[]),
            change("waits-for-it", &["downloading"]),
            change("queued", &[]),
            change("after-queued", &["queued"]),
        ];
        // One at a time: the signal comes while the first runs.
        let out = schedule(
            &changes,
            &[("downloading", Act::UntilSignalled)],
            1,
            Some(1),
        )
        .await;
        assert_eq!(
            out.log.started,
            ["downloading"],
            "nothing starts after the signal"
        );
        assert!(
            matches!(out.of("downloading"), Outcome::Failed(e) if e.to_string().contains("downloading it"))
        );
        for name in ["waits-for-it", "queued", "after-queued"] {
            assert_eq!(
                out.of(name),
                &Outcome::Skipped(Skip::Interrupted),
                "{name} is reported as interrupted"
            );
        }
        assert!(out.report.failed());
    }

    #[tokio::test]
    async fn a_cycle_runs_nothing_instead_of_waiting_forever() {
        let changes = [change("a", &["b"]), change("b", &["a"]), change("c", &[])];
        let out = schedule(&changes, &[], 2, None).await;
        assert!(out.log.started.is_empty());
        assert_eq!(
            out.of("c"),
            &Outcome::Skipped(Skip::DependenciesNeverFinish)
        );
    }
}
