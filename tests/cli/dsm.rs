//! The Task Scheduler script of docs/operations.md, run as DSM runs it: by `busybox sh` (DSM's
//! `/bin/sh` is ash), with only BusyBox's applets on PATH, and a stand-in labctl that exits 0, 2
//! or 1. It must behave as the docs say: silent on 0, silent on 2 for under an hour of pending
//! files, and otherwise print labctl's log and exit non-zero (DSM then mails the output).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The script block under "### Synology Task Scheduler entry".
fn documented_script() -> String {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let section = guide
        .split("### Synology Task Scheduler entry")
        .nth(1)
        .expect("the operations guide has the Task Scheduler section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh block");
    assert!(block.starts_with("#!/bin/sh\n"), "{block}");
    block.to_string()
}

/// A NAS in a directory: the script with its paths moved below `root`, a labctl that prints a
/// line and exits with the code in `root/code`, and BusyBox's applets as the only commands.
struct Nas {
    root: tempfile::TempDir,
}

impl Nas {
    fn new() -> Nas {
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("busybox is installed (scripts/test installs it)");
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for applet in ["sh", "find", "rm", "touch", "cat", "test", "["] {
            std::os::unix::fs::symlink(&busybox, bin.join(applet)).unwrap();
        }
        let scripts = root.path().join("volume1/scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        let labctl = scripts.join("labctl");
        std::fs::write(
            &labctl,
            format!(
                "#!{}/sh\necho \"labctl verify: 1 pending ($*)\"\nexit \"$(cat {}/code)\"\n",
                bin.display(),
                root.path().display()
            ),
        )
        .unwrap();
        make_executable(&labctl);
        let volume = root.path().join("volume1").display().to_string();
        let script = documented_script().replace("/volume1", &volume).replace(
            "/tmp/labctl-serve.log",
            &format!("{volume}/labctl-serve.log"),
        );
        std::fs::write(root.path().join("task.sh"), script).unwrap();
        Nas { root }
    }

    fn stamp(&self) -> PathBuf {
        self.root
            .path()
            .join("volume1/scripts/.labctl-pending-since")
    }

    /// Runs the task once with labctl exiting `code`: (exit status, what it printed).
    fn run(&self, code: i32) -> (i32, String) {
        std::fs::write(self.root.path().join("code"), code.to_string()).unwrap();
        let bin = self.root.path().join("bin");
        let out = Command::new(bin.join("sh"))
            .arg(self.root.path().join("task.sh"))
            .env_clear()
            .env("PATH", &bin)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap(), printed)
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn the_task_scheduler_script_mails_only_what_needs_a_person() {
    let nas = Nas::new();

    // All verified: silent, and no pending stamp.
    assert_eq!(nas.run(0), (0, String::new()));
    assert!(!nas.stamp().exists());

    // Pending (a sync in progress): silent, and the stamp says since when.
    assert_eq!(nas.run(2), (0, String::new()));
    assert!(nas.stamp().exists());
    assert_eq!(nas.run(2), (0, String::new()), "still under an hour");

    // Pending for over an hour: the log is printed and the exit is non-zero, so DSM mails it.
    let stamp = std::fs::File::options()
        .write(true)
        .open(nas.stamp())
        .unwrap();
    stamp
        .set_modified(SystemTime::now() - Duration::from_secs(61 * 60))
        .unwrap();
    let (code, printed) = nas.run(2);
    assert_eq!(code, 2, "{printed}");
    assert!(printed.contains("labctl verify: 1 pending"), "{printed}");
    assert!(
        printed.contains("--into"),
        "the documented arguments: {printed}"
    );

    // Everything verified again: the stamp goes, silence.
    assert_eq!(nas.run(0), (0, String::new()));
    assert!(!nas.stamp().exists());

    // A failure (a checksum, a signature, an unreadable folder): always mailed.
    let (code, printed) = nas.run(1);
    assert_eq!(code, 1, "{printed}");
    assert!(printed.contains("labctl verify"), "{printed}");
}
