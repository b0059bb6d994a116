use std::process::ExitCode;

use clap::Parser;

use labctl::cli::{Cli, Command};
use labctl::commands;
// A closed stderr is not a panic (see the macros in the library).
use labctl::eprintln;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version succeed. A usage error is an error (1): never the 2 that
            // tells CI "changes present" or "drift found".
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    configure_colors();
    labctl::settings::identify_run();
    labctl_transfer::pipeline::budget::return_freed_parts_to_the_system();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            // Apply listens for signals itself: it stops in order (uploads aborted, index left
            // alone, lock released) rather than being dropped.
            Command::Apply(args) => commands::apply::run(args).await,
            Command::Stage(args) => commands::stage::run(args).await,
            Command::Cleanup(args) => commands::cleanup::run(args).await,
            other => {
                labctl::interrupt::until_signal(read_only(other), |signal| {
                    Ok(ExitCode::from(signal.exit_code()))
                })
                .await
            }
        }
    });
    // A prompt's blocking read may still be waiting on stdin after an interrupt: do not wait
    // for it on the way out.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("{}", failure.with_default_hint());
            ExitCode::from(1)
        }
    }
}

/// The commands that change nothing in the store (doctor's probe objects aside, which it
/// deletes as it goes): dropped at a signal.
async fn read_only(command: &Command) -> Result<ExitCode, labctl::failure::Failure> {
    match command {
        Command::Validate(args) => commands::validate::run(args),
        Command::Plan(args) => commands::plan::run(args).await,
        Command::Graph(args) => commands::graph::run(args),
        Command::List(args) => commands::list::run(args).await,
        Command::Apply(_) | Command::Stage(_) | Command::Cleanup(_) => {
            unreachable!("apply, stage and cleanup are run by main with their own signal handling")
        }
        Command::Drift(args) => commands::drift::run(args).await,
        Command::Pin(args) => commands::pin::run(args).await,
        Command::Outdated(args) => commands::outdated::run(args).await,
        Command::Bump(args) => commands::bump::run(args).await,
        Command::ForceUnlock(args) => commands::force_unlock::run(args).await,
        Command::Doctor(args) => commands::doctor::run(args).await,
        Command::Verify(args) => commands::verify::run(args),
        Command::History(args) => commands::history::run(args).await,
        Command::Completions(args) => commands::completions::completions(args),
        Command::Man(args) => commands::completions::man(args),
    }
}

/// Colors only for a terminal, and never when `NO_COLOR` is set (https://no-color.org).
fn configure_colors() {
    let no_color = labctl::settings::env().no_color;
    console::set_colors_enabled(!no_color && console::Term::stdout().is_term());
    console::set_colors_enabled_stderr(!no_color && console::Term::stderr().is_term());
}
