use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs labctl in the repository root, without colors and without a store in the environment.
pub fn labctl(args: &[&str]) -> Run {
    labctl_in(&repo(), args)
}

pub fn labctl_in(dir: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_labctl"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("LABCTL_STORE")
        .env_remove("LABCTL_ALLOW_INSECURE_LOOPBACK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("labctl runs");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    // A guard against hangs, not a timing assertion: a run this long is stuck.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("labctl {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status
            .code()
            .unwrap_or_else(|| panic!("labctl {args:?} was killed by a signal: {status}")),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    assert_ne!(run.code, 101, "labctl {args:?} panicked:\n{}", run.stderr);
    run
}

#[path = "../support/plan_rows.rs"]
mod plan_rows;
pub use plan_rows::{actions, row};
