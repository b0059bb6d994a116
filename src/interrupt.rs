//! SIGINT and SIGTERM during an apply. A CI runner cancels with SIGTERM; people press Ctrl-C.
//! The first signal asks the run to stop (no new image starts, transfers abort their multipart
//! uploads, the lock is released); a second one exits at once — still exposing nothing, since
//! an upload that was never completed is invisible.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// 128 + the signal number, as shells report a process ended by it.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Listens for both signals from now on. The receiver turns to `Some` at the first signal;
/// `stopping` says what the command does then.
pub fn install(stopping: &'static str) -> std::io::Result<watch::Receiver<Option<Signal>>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let first = next(&mut interrupt, &mut terminate).await;
        eprintln!(
            "\n{}: stopping — {stopping} (send it again to exit at once)",
            first.name()
        );
        let _ = tx.send(Some(first));
        let second = next(&mut interrupt, &mut terminate).await;
        eprintln!(
            "{} again: exiting now. Unfinished uploads stay invisible (the next apply aborts them and plans them again); a lock left behind is taken over once its lease runs out (or removed with `labctl force-unlock`).",
            second.name()
        );
        // Builds run in process groups of their own: they would outlive this process.
        crate::source::packer::kill_running_builds();
        std::process::exit(second.exit_code().into());
    });
    Ok(rx)
}

async fn next(
    interrupt: &mut tokio::signal::unix::Signal,
    terminate: &mut tokio::signal::unix::Signal,
) -> Signal {
    tokio::select! {
        _ = interrupt.recv() => Signal::Interrupt,
        _ = terminate.recv() => Signal::Terminate,
    }
}

/// Runs a command that changes nothing in the store (plan, drift, list…) until it ends or a
/// signal arrives. At a signal the command is dropped — its requests and temporary files with it
/// — and the run ends with 130 or 143, as if the signal had ended it, but after cleaning up.
pub async fn until_signal<T>(
    command: impl std::future::Future<Output = T>,
    interrupted: impl FnOnce(Signal) -> T,
) -> T {
    let mut signals = match install("nothing was changed") {
        Ok(rx) => rx,
        // Without a handler the default action still ends the run; nothing is held open.
        Err(_) => return command.await,
    };
    tokio::select! {
        out = command => out,
        signal = wait(&mut signals) => interrupted(signal),
    }
}

/// Resolves at the first signal (never, if the sender is gone without one).
pub async fn wait(rx: &mut watch::Receiver<Option<Signal>>) -> Signal {
    loop {
        if let Some(s) = *rx.borrow_and_update() {
            return s;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A `bool` view of the signal for the stages that only need to know whether to stop.
pub fn as_cancel(mut rx: watch::Receiver<Option<Signal>>) -> watch::Receiver<bool> {
    let (tx, cancel) = watch::channel(rx.borrow().is_some());
    tokio::spawn(async move {
        wait(&mut rx).await;
        let _ = tx.send(true);
    });
    cancel
}
