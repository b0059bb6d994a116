//! Packer builds: run `packer init`/`packer build` in a scratch copy of the template directory,
//! stream the output prefixed with the image name, and find the artifact.
//!
//! Secrets reach Packer through `PKR_VAR_*` in the environment, which the build inherits; their
//! values are masked in every line labctl prints.

use std::borrow::Cow;

use labctl_core::hint::Hint;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PackerError {
    #[error("cannot run `packer`: {0}")]
    NotInstalled(String),
    #[error("cannot prepare the build directory from `{template}`: {message}")]
    Prepare { template: String, message: String },
    #[error("`packer {step}` failed ({status})")]
    Failed { step: &'static str, status: String },
    #[error("the build did not produce `{artifact}`; it produced: {produced}")]
    NoArtifact { artifact: String, produced: String },
    #[error("cancelled")]
    Cancelled,
}

impl Hint for PackerError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            PackerError::NotInstalled(_) => {
                Some("install Packer (Debian: apt-get install packer) or put it on PATH")
            }
            _ => None,
        };
        hint.map(Cow::Borrowed)
    }
}

pub struct Build {
    /// The scratch directory; removed when this is dropped.
    pub dir: tempfile::TempDir,
    pub artifact: PathBuf,
    pub packer_version: String,
}

/// What to redact for these secret values (`PKR_VAR_*`, the index signing key): each value,
/// and each long line of a multi-line one — a key file's lines are printed one at a time, if at
/// all. Values too short to be secrets are left out (they would redact ordinary words).
pub fn redactions<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    values
        .into_iter()
        .filter(|v| v.len() >= 4)
        .flat_map(|v| {
            let lines: Vec<String> = v
                .lines()
                .map(str::trim)
                .filter(|l| l.len() >= 16)
                .map(str::to_string)
                .collect();
            std::iter::once(v.to_string()).chain(lines)
        })
        .collect()
}

/// A line of build output with the secrets and every presigned URL's credentials replaced.
pub fn redact(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    redact_signed_urls(&out)
}

/// Query parameters that make a URL a key to the bucket (SigV4 and SigV2 presigning): whoever
/// reads a CI log must not be able to fetch from the store with them.
const SIGNING_PARAMETERS: [&str; 5] = [
    "x-amz-signature=",
    "x-amz-credential=",
    "x-amz-security-token=",
    "signature=",
    "awsaccesskeyid=",
];

/// Replaces the values of [`SIGNING_PARAMETERS`] wherever they appear (a presigned URL echoed
/// by a shell step, curl's error message, Packer's own log), keeping the rest of the URL
/// readable.
pub fn redact_signed_urls(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    let mut out = String::with_capacity(line.len());
    let mut copied = 0;
    let mut at = 0;
    while at < line.len() {
        let hit = SIGNING_PARAMETERS.iter().find(|p| {
            lower[at..].starts_with(*p)
                // A parameter name, not the end of a longer word; also percent-encoded
                // inside another URL's query (`%26`, `%3F`).
                && (at == 0
                    || !line.as_bytes()[at - 1].is_ascii_alphanumeric()
                    || ["%26", "%3f"].iter().any(|e| lower[..at].ends_with(e)))
        });
        match hit {
            Some(p) => {
                let value_start = at + p.len();
                let value_end = line[value_start..]
                    .find(|c: char| {
                        c == '&'
                            || c == '\''
                            || c == '"'
                            || c == '<'
                            || c == '>'
                            || c.is_whitespace()
                    })
                    .map_or(line.len(), |i| value_start + i);
                out.push_str(&line[copied..value_start]);
                out.push_str("<redacted>");
                copied = value_end;
                at = value_end.max(at + 1);
            }
            None => at += line[at..].chars().next().map_or(1, char::len_utf8),
        }
    }
    out.push_str(&line[copied..]);
    out
}

pub async fn version() -> Result<String, PackerError> {
    let out = Command::new("packer")
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| PackerError::NotInstalled(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("").trim();
    Ok(first
        .trim_start_matches("Packer ")
        .trim_start_matches('v')
        .to_string())
}

/// Copies the template directory, leaving out build output and caches.
fn copy_template(from: &Path, to: &Path, artifact: &str) -> std::io::Result<()> {
    let output_dir = artifact.split('/').next().unwrap_or(artifact);
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if from.join(&name) == from.join(output_dir)
            || matches!(name_str.as_ref(), "packer_cache" | ".packer.d")
        {
            continue;
        }
        let target = to.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        // Symbolic links are not followed: a template from a pull request must not pull the
        // runner's files into the build.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn declares_plugins(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pkr.hcl"))
        .any(|e| {
            crate::template_hash::read_small_file(&e.path(), 8 * 1024 * 1024)
                .is_some_and(|t| t.contains("required_plugins"))
        })
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            list_files(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.display().to_string());
        }
    }
}

/// Runs the build. `variables` are resolved values, passed as `-var name=value`.
pub async fn build(
    image: &str,
    template: &Path,
    variables: &[(String, String)],
    artifact: &str,
    secrets: &[String],
    log: &dyn crate::progress::Progress,
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<Build, PackerError> {
    let packer_version = version().await?;
    let dir = tempfile::Builder::new()
        .prefix("labctl-packer-")
        .tempdir()
        .map_err(|e| PackerError::Prepare {
            template: template.display().to_string(),
            message: e.to_string(),
        })?;
    copy_template(template, dir.path(), artifact).map_err(|e| PackerError::Prepare {
        template: template.display().to_string(),
        message: e.to_string(),
    })?;

    if declares_plugins(dir.path()) {
        run(
            image,
            "init",
            &["init", "."],
            dir.path(),
            log,
            secrets,
            &mut cancel,
        )
        .await?;
    }
    let mut args: Vec<String> = vec!["build".into(), "-color=false".into()];
    for (k, v) in variables {
        args.push("-var".into());
        args.push(format!("{k}={v}"));
    }
    args.push(".".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(image, "build", &args, dir.path(), log, secrets, &mut cancel).await?;

    let path = dir.path().join(artifact);
    if !path.is_file() {
        let mut produced = Vec::new();
        list_files(dir.path(), dir.path(), &mut produced);
        let template_files = {
            let mut t = Vec::new();
            list_files(template, template, &mut t);
            t
        };
        produced.retain(|p| !template_files.contains(p));
        produced.sort();
        return Err(PackerError::NoArtifact {
            artifact: artifact.to_string(),
            produced: if produced.is_empty() {
                "nothing".into()
            } else {
                produced.join(", ")
            },
        });
    }
    Ok(Build {
        dir,
        artifact: path,
        packer_version,
    })
}

async fn run(
    image: &str,
    step: &'static str,
    args: &[&str],
    dir: &Path,
    log: &dyn crate::progress::Progress,
    secrets: &[String],
    cancel: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), PackerError> {
    let mut child = Command::new("packer")
        .args(args)
        .current_dir(dir)
        .env("CHECKPOINT_DISABLE", "1")
        .env("PACKER_NO_COLOR", "1")
        // The index signing key and the store's credentials are labctl's, not the build's:
        // a build reads what it needs through presigned URLs.
        .env_remove(labctl_core::signing::SECRET_KEY_VAR)
        .env_remove(labctl_core::signing::PASSWORD_VAR)
        .env_remove("E2_ACCESS_KEY")
        .env_remove("E2_SECRET_KEY")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own: labctl decides when the build stops, and stopping it reaches
        // every process the build started (shell steps, qemu), not only packer.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| PackerError::NotInstalled(e.to_string()))?;
    let _running = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(RunningGroup::register);
    let mut out = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut err = BufReader::new(child.stderr.take().expect("piped")).lines();
    let (mut out_done, mut err_done) = (false, false);
    while !(out_done && err_done) {
        tokio::select! {
            line = out.next_line(), if !out_done => match line {
                Ok(Some(l)) => log.line(image, &redact(&l, secrets)),
                _ => out_done = true,
            },
            line = err.next_line(), if !err_done => match line {
                Ok(Some(l)) => log.line(image, &redact(&l, secrets)),
                _ => err_done = true,
            },
            _ = cancel.changed() => {
                stop(&mut child).await;
                return Err(PackerError::Cancelled);
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| PackerError::NotInstalled(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(PackerError::Failed {
            step,
            status: status.to_string(),
        })
    }
}

/// Process groups of the builds running now, so that exiting at once (a second signal) can take
/// them along instead of orphaning Packer and its VM.
static RUNNING_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// A build's process group in [`RUNNING_GROUPS`] while the build runs.
struct RunningGroup(i32);

impl RunningGroup {
    fn register(group: i32) -> RunningGroup {
        RUNNING_GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(group);
        RunningGroup(group)
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        RUNNING_GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|g| *g != self.0);
    }
}

/// Kills every running build's process group: for a process about to exit without waiting.
pub fn kill_running_builds() {
    let groups = RUNNING_GROUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for group in groups {
        // SAFETY: kill(2) on a process group this process created for a build; no memory is
        // involved.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
}

/// How long Packer gets to clean up (stop its VM, delete its scratch files) after SIGINT.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGINT to the build's process group first, as a terminal would send it, so that Packer stops
/// qemu and cleans up; after the grace period, or once Packer is gone, whatever is left of the
/// group is killed, so no VM or shell step outlives the run.
async fn stop(child: &mut tokio::process::Child) {
    let Some(group) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        let _ = child.kill().await;
        return;
    };
    // SAFETY: kill(2) on the process group this process created for the build (its leader is
    // the packer child, not yet reaped, so the group ID cannot have been reused).
    unsafe {
        libc::kill(-group, libc::SIGINT);
    }
    let _ = tokio::time::timeout(STOP_GRACE, child.wait()).await;
    // SAFETY: as above; a group with no members left makes kill(2) fail harmlessly (ESRCH).
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_presigned_urls_and_keeps_the_rest() {
        let line = "curl: (22) The requested URL returned error: 403 http://127.0.0.1:9000/lab-images/images/vyos/v.iso?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261126%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261126T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=0123456789abcdef 'next'";
        assert_eq!(
            redact(line, &[]),
            "curl: (22) The requested URL returned error: 403 http://127.0.0.1:9000/lab-images/images/vyos/v.iso?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=<redacted>&X-Amz-Date=20261126T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=<redacted> 'next'"
        );
        assert_eq!(
            redact(
                "GET /b/k?AWSAccessKeyId=AKIA&Expires=1&Signature=abc%3D",
                &[]
            ),
            "GET /b/k?AWSAccessKeyId=<redacted>&Expires=1&Signature=<redacted>"
        );
        assert_eq!(
            redact("url x-amz-security-token=tok", &[]),
            "url x-amz-security-token=<redacted>"
        );
        // Not a parameter: words that merely contain the names stay.
        for plain in [
            "MySignature=1",
            "no signatures here",
            "ünïcode ✓ Signature",
            "",
        ] {
            assert_eq!(redact(plain, &[]), plain);
        }
    }

    #[test]
    fn redacts_every_occurrence() {
        let secrets = vec!["hunter22".to_string()];
        assert_eq!(
            redact("pw=hunter22 again hunter22", &secrets),
            "pw=<redacted> again <redacted>"
        );
    }

    #[test]
    fn copies_the_template_without_output_or_caches() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join("a.pkr.hcl"), "x").unwrap();
        std::fs::create_dir_all(from.path().join("output")).unwrap();
        std::fs::write(from.path().join("output/old.raw"), "old").unwrap();
        std::fs::create_dir_all(from.path().join("packer_cache")).unwrap();
        std::fs::create_dir_all(from.path().join("scripts")).unwrap();
        std::fs::write(from.path().join("scripts/s.sh"), "y").unwrap();
        copy_template(from.path(), to.path(), "output/new.raw").unwrap();
        assert!(to.path().join("a.pkr.hcl").exists());
        assert!(to.path().join("scripts/s.sh").exists());
        assert!(!to.path().join("output").exists());
        assert!(!to.path().join("packer_cache").exists());
    }
}
