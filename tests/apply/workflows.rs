//! The workflows users copy, run here: every job of images-plan, images-apply (single and
//! fan-out), images-drift and images-bump, step by step, by `scripts/workflow-run` (GitHub's
//! expression rules, GITHUB_OUTPUT/ENV/PATH/STEP_SUMMARY files, reusable workflows, matrices,
//! local composite actions) against moto and the fixture vendors. The `uses:` steps that move
//! data are stood in for by their file or API equivalents: artifacts are directories shared
//! between runs, `actions/github-script` bodies run under node with the REST calls recorded,
//! `gh` is a recording stand-in, `git push` goes to a bare repository. A wrong output name,
//! artifact path, jq filter or script fails these tests. Steps that only prepare a runner
//! machine (udev rules for KVM, `apt-get install qemu`) are named and not run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;
use crate::packer::{gateway, gateway_template};
use crate::support::fixture::Faults;
use crate::support::servers::BUCKET;

const RUNNER_SETUP: [&str; 3] = [
    "Enable KVM for the qemu builder",
    "Install qemu",
    "Enable KVM and install qemu",
];
const PR: u64 = 12;

/// The project's `.github/`, a manifest and its Packer templates, committed; checked out by
/// the workflows from a bare clone.
struct Repo {
    bare: PathBuf,
    sha: String,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=lab",
            "-c",
            "user.email=lab@example.invalid",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Commits the lab's manifest (with the bucket named in it, as a repository has it) and its
/// templates as `images/`.
fn repo(lab: &Lab, name: &str) -> Repo {
    let src = lab.dir().join(format!("{name}-src"));
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(".github"),
        &src.join(".github"),
    );
    let manifest = std::fs::read_to_string(lab.manifest_path())
        .unwrap()
        .replacen(
            "spec:\n",
            &format!("spec:\n  store:\n    s3:\n      bucket: {BUCKET}\n"),
            1,
        );
    std::fs::create_dir_all(src.join("images")).unwrap();
    std::fs::write(src.join("images/images.yaml"), manifest).unwrap();
    if lab.dir().join("packer").exists() {
        copy_dir(&lab.dir().join("packer"), &src.join("images/packer"));
    }
    git(&src, &["init", "-q", "-b", "main"]);
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "images"]);
    let bare = lab.dir().join(format!("{name}.git"));
    git(
        lab.dir(),
        &[
            "clone",
            "-q",
            "--bare",
            src.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let sha = git(&src, &["rev-parse", "HEAD"]);
    Repo { bare, sha }
}

/// Python with PyYAML: the one the test servers' installer made (moto needs PyYAML).
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("LABCTL_WORKFLOW_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("LABCTL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/labctl-ci")
        });
    let venv = cache.join("moto-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `scripts/test` (it installs the test servers)",
        venv.display()
    );
    venv
}

/// One workflow run.
struct Workflow<'a> {
    lab: &'a Lab,
    repo: &'a Repo,
    file: &'a str,
    event_name: &'a str,
    event: Value,
    api: Value,
    vars: Vec<(&'a str, String)>,
    secrets: Vec<(&'a str, String)>,
    env: Vec<(&'a str, String)>,
}

struct Ran {
    code: i32,
    report: Value,
    output: String,
}

impl Ran {
    fn job(&self, name: &str) -> &Value {
        let job = &self.report["jobs"][name];
        assert!(!job.is_null(), "no job {name}: {}", self.log());
        job
    }

    fn result(&self, name: &str) -> &str {
        self.job(name)["result"].as_str().unwrap()
    }

    /// Every step's outcome and log, for failure messages.
    fn log(&self) -> String {
        let mut out = self.output.clone();
        if let Some(jobs) = self.report["jobs"].as_object() {
            for (name, job) in jobs {
                out.push_str(&format!("\n== {name}: {}\n", job["result"]));
                for leg in job["legs"].as_array().into_iter().flatten() {
                    for step in leg["steps"].as_array().into_iter().flatten() {
                        out.push_str(&format!(
                            "-- {} [{}]\n{}\n",
                            step["name"].as_str().unwrap_or(""),
                            step["outcome"].as_str().unwrap_or(""),
                            step["log"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
        }
        out
    }

    /// The recorded `github.rest` calls named `api` (e.g. `rest.issues.createComment`).
    fn api_calls(&self, api: &str) -> Vec<&Value> {
        self.report["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["api"] == api)
            .map(|c| &c["params"])
            .collect()
    }

    /// The recorded `gh` calls whose arguments start with `prefix`.
    fn gh_calls(&self, prefix: &[&str]) -> Vec<&Value> {
        self.report["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["gh"].as_array().is_some_and(|args| {
                    args.len() >= prefix.len() && prefix.iter().zip(args).all(|(p, a)| a == *p)
                })
            })
            .collect()
    }
}

impl Workflow<'_> {
    fn run(&self) -> Ran {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let work = self.lab.dir().join(format!("run-{n}"));
        std::fs::create_dir_all(&work).unwrap();
        let event = work.join("event.json");
        std::fs::write(&event, self.event.to_string()).unwrap();
        let api = work.join("api.json");
        std::fs::write(&api, self.api.to_string()).unwrap();
        let out = work.join("report.json");
        let server = self.lab.server.as_ref().expect("an S3 backend");
        let endpoint = self.lab.endpoint.clone().unwrap();
        let mut cmd = Command::new(python());
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/workflow-run"))
            .arg(self.file)
            .args(["--repo", self.repo.bare.to_str().unwrap()])
            .args(["--sha", &self.repo.sha])
            .args(["--event-name", self.event_name])
            .args(["--event", event.to_str().unwrap()])
            .args(["--api", api.to_str().unwrap()])
            .args(["--labctl", env!("CARGO_BIN_EXE_labctl")])
            .args(["--work", work.to_str().unwrap()])
            .args([
                "--artifacts",
                self.lab.dir().join("artifacts").to_str().unwrap(),
            ])
            .args(["--out", out.to_str().unwrap()]);
        for (key, value) in [
            ("E2_ACCESS_KEY", &server.access_key),
            ("E2_SECRET_KEY", &server.secret_key),
            ("E2_RO_ACCESS_KEY", &server.access_key),
            ("E2_RO_SECRET_KEY", &server.secret_key),
            ("E2_ENDPOINT", &endpoint),
        ] {
            cmd.args(["--secret", &format!("{key}={value}")]);
        }
        for (key, value) in &self.vars {
            cmd.args(["--var", &format!("{key}={value}")]);
        }
        for (key, value) in &self.secrets {
            cmd.args(["--secret", &format!("{key}={value}")]);
        }
        let mut env = vec![
            (
                "LABCTL_ALLOW_INSECURE_LOOPBACK".to_string(),
                "1".to_string(),
            ),
            ("NO_COLOR".to_string(), "1".to_string()),
        ];
        if let Some(region) = &server.region {
            env.push(("E2_REGION".into(), region.clone()));
        }
        env.extend(self.env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        for (key, value) in env {
            cmd.args(["--env", &format!("{key}={value}")]);
        }
        for step in RUNNER_SETUP {
            cmd.args(["--stand-in-step", step]);
        }
        let output = cmd.output().expect("the workflow runner starts");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let report = std::fs::read(&out)
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap_or_else(|_| panic!("the workflow runner wrote no report:\n{text}"));
        Ran {
            code: output.status.code().unwrap_or(-1),
            report,
            output: text,
        }
    }
}

fn pull_request_event(repo: &Repo) -> Value {
    json!({
        "number": PR,
        "pull_request": {"number": PR, "head": {"sha": repo.sha}, "base": {"ref": "main"}},
    })
}

/// What reviewed-plan asks GitHub on a push: the merged pull request of the commit, and the
/// successful images-plan run of its head.
fn reviewed_plan_api(repo: &Repo) -> Value {
    json!({
        "rest.repos.listPullRequestsAssociatedWithCommit": [
            {"number": PR, "merged_at": "2026-12-01T10:00:00Z", "head": {"sha": repo.sha}}
        ],
        "rest.actions.listWorkflowRuns": {"total_count": 1, "workflow_runs": [{"id": 9001}]},
    })
}

/// An ISO, an xz image and a Packer build from the ISO: two waves when fanned out.
fn lab_with_images() -> (Lab, Vec<u8>) {
    let lab = Lab::new(Backend::Moto);
    let iso = image_bytes(61, 2 * 1024 * 1024 + 7);
    let plain = image_bytes(62, 1024 * 1024 + 3);
    let packed = xz(&plain);
    lab.serve("/iso", iso.clone(), Faults::default());
    lab.serve("/packed.xz", packed.clone(), Faults::default());
    lab.template("gateway", &gateway_template("v1"));
    lab.write_manifest_with(
        &[
            Entry::raw("iso", "/iso", &iso),
            Entry::compressed("packed", "/packed.xz", &packed, "xz", &plain),
        ],
        &[gateway(true)],
    );
    (lab, iso)
}

fn plan_run<'a>(lab: &'a Lab, repo: &'a Repo) -> Workflow<'a> {
    Workflow {
        lab,
        repo,
        file: ".github/workflows/images-plan.yml",
        event_name: "pull_request",
        event: pull_request_event(repo),
        api: json!({}),
        vars: vec![],
        secrets: vec![],
        env: vec![],
    }
}

fn apply_run<'a>(lab: &'a Lab, repo: &'a Repo, fanout: bool) -> Workflow<'a> {
    Workflow {
        lab,
        repo,
        file: ".github/workflows/images-apply.yml",
        event_name: "push",
        event: json!({"ref": "refs/heads/main", "after": repo.sha}),
        api: reviewed_plan_api(repo),
        vars: if fanout {
            vec![("LABCTL_FANOUT", "true".to_string())]
        } else {
            vec![]
        },
        secrets: vec![],
        env: vec![],
    }
}

#[test]
fn images_plan_comments_the_plan_and_saves_it_for_the_merge() {
    let (lab, _) = lab_with_images();
    let repo = repo(&lab, "lab");
    let ran = plan_run(&lab, &repo).run();
    assert_eq!(ran.code, 0, "{}", ran.log());
    assert_eq!(ran.result("plan"), "success");
    let comments = ran.api_calls("rest.issues.createComment");
    assert_eq!(comments.len(), 1, "{}", ran.log());
    assert_eq!(comments[0]["issue_number"], PR);
    let body = comments[0]["body"].as_str().unwrap();
    for wanted in ["<!-- labctl-plan -->", "iso", "packed", "gateway", "create"] {
        assert!(body.contains(wanted), "`{wanted}` in the comment:\n{body}");
    }
    let artifact = format!("labctl-plan-{}", repo.sha);
    assert_eq!(
        ran.report["artifacts"][&artifact],
        json!(["matrix.json", "plan.json"]),
        "{}",
        ran.report["artifacts"]
    );

    // A second push to the pull request updates the one comment.
    let mut again = plan_run(&lab, &repo);
    again.api = json!({"rest.issues.listComments": [
        {"id": 77, "body": "<!-- labctl-plan -->\nthe earlier plan"}
    ]});
    std::fs::remove_dir_all(lab.dir().join("artifacts")).unwrap();
    let ran = again.run();
    assert_eq!(ran.code, 0, "{}", ran.log());
    let updated = ran.api_calls("rest.issues.updateComment");
    assert_eq!(updated.len(), 1, "{}", ran.log());
    assert_eq!(updated[0]["comment_id"], 77);
    assert!(ran.api_calls("rest.issues.createComment").is_empty());
}

#[test]
fn images_apply_applies_the_reviewed_plan_in_one_job() {
    let (lab, iso) = lab_with_images();
    let repo = repo(&lab, "lab");
    assert_eq!(plan_run(&lab, &repo).run().code, 0);
    let ran = apply_run(&lab, &repo, false).run();
    assert_eq!(ran.code, 0, "{}", ran.log());
    assert_eq!(ran.result("apply"), "success");
    assert_eq!(ran.result("plan"), "skipped", "the fan-out's jobs stay off");
    assert_eq!(ran.result("promote"), "skipped");
    assert_eq!(lab.object("test/iso.img").unwrap(), iso);
    assert!(lab.object("test/packed.img").is_some());
    assert!(lab.object("test/gateway.raw").is_some());
    assert!(lab.head(".labctl/lock.json").is_none());
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "converged: {}", plan.output());
}

#[test]
fn images_apply_says_on_the_pull_request_when_its_plan_is_stale() {
    let (lab, _) = lab_with_images();
    let repo = repo(&lab, "lab");
    assert_eq!(plan_run(&lab, &repo).run().code, 0);
    // The bucket moved on after the review: an apply by hand.
    let direct = lab.labctl(&["apply", "--auto-approve"]);
    assert_eq!(direct.code, 0, "{}", direct.output());
    let ran = apply_run(&lab, &repo, false).run();
    assert_eq!(ran.code, 1, "{}", ran.log());
    assert_eq!(ran.result("apply"), "failure");
    let comments = ran.api_calls("rest.issues.createComment");
    assert_eq!(comments.len(), 1, "{}", ran.log());
    assert_eq!(comments[0]["issue_number"], PR);
    let body = comments[0]["body"].as_str().unwrap();
    assert!(
        body.contains("it is stale") && body.contains("the plan is stale"),
        "{body}"
    );
}

#[test]
fn images_apply_fans_out_over_stage_legs_and_promotes() {
    let (lab, iso) = lab_with_images();
    let repo = repo(&lab, "lab");
    assert_eq!(plan_run(&lab, &repo).run().code, 0);
    let ran = apply_run(&lab, &repo, true).run();
    assert_eq!(ran.code, 0, "{}", ran.log());
    assert_eq!(ran.result("apply"), "skipped");
    assert_eq!(ran.result("plan"), "success");
    assert_eq!(ran.job("plan")["outputs"]["waves"], "2", "{}", ran.log());
    // Wave 1: the two downloads, one leg each; wave 2: the build.
    let legs = |job: &str| -> Vec<String> {
        ran.job(job)["legs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["matrix"]["units"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(legs("stage-1/stage"), ["iso", "packed"], "{}", ran.log());
    assert_eq!(legs("stage-2/stage"), ["gateway"], "{}", ran.log());
    assert_eq!(ran.result("stage-3"), "skipped");
    assert_eq!(ran.result("promote"), "success", "{}", ran.log());
    let artifacts = ran.report["artifacts"].as_object().unwrap();
    for leg in ["labctl-fanout-plan", "labctl-stage-"] {
        assert!(
            artifacts.keys().any(|k| k.starts_with(leg)),
            "{leg}: {artifacts:?}"
        );
    }
    assert_eq!(lab.object("test/iso.img").unwrap(), iso);
    assert!(lab.object("test/packed.img").is_some());
    assert!(lab.object("test/gateway.raw").is_some());
    assert!(
        lab.keys(".labctl/blobs/").is_empty(),
        "promoted blobs removed"
    );
    let plan = lab.labctl(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "converged: {}", plan.output());
}

#[test]
fn images_drift_opens_an_issue_with_the_report_and_closes_it_once_clean() {
    let (lab, _) = lab_with_images();
    let repo = repo(&lab, "lab");
    assert_eq!(lab.labctl(&["apply", "--auto-approve"]).code, 0);
    let drift = |api: Value| {
        Workflow {
            lab: &lab,
            repo: &repo,
            file: ".github/workflows/images-drift.yml",
            event_name: "schedule",
            event: json!({"schedule": "17 3 * * *"}),
            api,
            vars: vec![],
            secrets: vec![],
            env: vec![],
        }
        .run()
    };
    // The vendor replaced the ISO behind its URL.
    lab.serve("/iso", image_bytes(63, 1000), Faults::default());
    let ran = drift(json!({}));
    assert_eq!(ran.code, 0, "{}", ran.log());
    assert_eq!(
        ran.job("drift")["legs"][0]["steps"][2]["outputs"]["code"],
        "2"
    );
    let created = ran.api_calls("rest.issues.create");
    assert_eq!(created.len(), 1, "{}", ran.log());
    assert_eq!(created[0]["labels"], json!(["image-drift"]));
    let body = created[0]["body"].as_str().unwrap();
    assert!(
        body.contains("source-changed") && body.contains("iso"),
        "{body}"
    );

    // The manifest and the vendor agree again: the open issue is closed.
    lab.serve(
        "/iso",
        image_bytes(61, 2 * 1024 * 1024 + 7),
        Faults::default(),
    );
    let ran = drift(json!({"rest.issues.listForRepo": [{"number": 5, "body": body}]}));
    assert_eq!(ran.code, 0, "{}", ran.log());
    let closed = ran.api_calls("rest.issues.update");
    assert_eq!(closed.len(), 1, "{}", ran.log());
    assert_eq!(closed[0]["state"], "closed");
}

const SCHEMATIC: &str = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba";

/// One Talos image of the factory fixture, tracked from v1.9.1, in `group` if given.
fn talos_image(base: &str, asset: &str, group: Option<&str>) -> String {
    let track = match group {
        Some(g) => format!("{{channel: talos, group: {g}}}"),
        None => "{channel: talos}".to_string(),
    };
    format!(
        r#"    - name: talos-{{{{ version.bare }}}}-{asset}
      version: v1.9.1
      track: {track}
      source:
        type: http
        url: {base}/image/{SCHEMATIC}/{{{{ version }}}}/{asset}.raw.zst
        checksum: sha256:{zero}1
        decompress: zstd
      destination: talos/talos-{{{{ version.bare }}}}-{asset}.raw
      validation:
        expected: sha256:{zero}2
"#,
        zero = "0".repeat(63)
    )
}

#[test]
fn images_bump_opens_one_verified_pull_request_per_group() {
    use crate::support::vendors::VendorServer;
    let lab = Lab::new(Backend::Moto);
    let vendor = VendorServer::start(&lab.dir().join("vendors"));
    vendor.serve_talos_versions("/versions", &["v1.9.0", "v1.9.1", "v1.9.2"]);
    vendor.serve_talos_versions("/versions?broken=true", &[]);
    let assets = ["metal-amd64", "metal-arm64", "nocloud-amd64"];
    for (i, asset) in assets.iter().enumerate() {
        let raw = image_bytes(70 + i as u64, 50_000);
        vendor.bytes(
            &format!("/image/{SCHEMATIC}/v1.9.2/{asset}.raw.zst"),
            &zstd(&raw),
        );
    }
    let base = vendor.base.clone();
    lab.write_manifest_text(&format!(
        "apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  images:\n{}{}{}",
        talos_image(&base, "metal-amd64", Some("talos-metal")),
        talos_image(&base, "metal-arm64", Some("talos-metal")),
        talos_image(&base, "nocloud-amd64", None),
    ));
    let repo = repo(&lab, "lab");
    let ran = Workflow {
        lab: &lab,
        repo: &repo,
        file: ".github/workflows/images-bump.yml",
        event_name: "schedule",
        event: json!({"schedule": "41 4 * * 1"}),
        api: json!({}),
        vars: vec![],
        // The fine-grained token the pull requests are opened with (no GitHub App here).
        secrets: vec![("LABCTL_BUMP_TOKEN", "github_pat_fixture".to_string())],
        env: vec![
            ("SSL_CERT_FILE", vendor.ca.display().to_string()),
            ("GITHUB_API_URL", "https://api.github.invalid".to_string()),
        ],
    }
    .run();
    assert_eq!(ran.code, 0, "{}", ran.log());
    assert_eq!(ran.result("outdated"), "success");
    assert_eq!(
        ran.job("outdated")["outputs"]["units"],
        r#"["talos-1.9.1-nocloud-amd64","talos-metal"]"#,
        "{}",
        ran.log()
    );
    assert_eq!(ran.job("outdated")["outputs"]["lookup_failed"], "0");
    assert_eq!(ran.result("bump"), "success", "{}", ran.log());
    assert_eq!(ran.result("close-stale"), "success", "{}", ran.log());

    // One pull request per unit, each body the verified bump of exactly its images.
    let created = ran.gh_calls(&["pr", "create"]);
    assert_eq!(created.len(), 2, "{}", ran.log());
    let body_of = |branch: &str| -> String {
        created
            .iter()
            .find(|c| c["gh"].as_array().unwrap().iter().any(|a| a == branch))
            .unwrap_or_else(|| panic!("no pull request from {branch}: {created:?}"))["body"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // The heading names what the pull request bumps (its plan of the result shows the whole
    // manifest).
    let heading = |body: &str| -> String {
        body.lines()
            .find(|l| l.starts_with("## labctl bump:"))
            .unwrap_or_else(|| panic!("no heading: {body}"))
            .to_string()
    };
    let grouped = body_of("labctl/bump/talos-metal");
    assert_eq!(
        heading(&grouped),
        "## labctl bump: talos-1.9.1-metal-amd64 v1.9.2, talos-1.9.1-metal-arm64 v1.9.2",
        "{grouped}"
    );
    assert!(grouped.contains("Renamed to `talos-1.9.2-metal-arm64`"));
    let single = body_of("labctl/bump/talos-1.9.1-nocloud-amd64");
    assert_eq!(
        heading(&single),
        "## labctl bump: talos-1.9.1-nocloud-amd64 v1.9.2",
        "{single}"
    );
    // The branches were pushed with the manifest the bodies describe.
    for (branch, wanted, unchanged) in [
        ("labctl/bump/talos-metal", "metal-arm64", "nocloud-amd64"),
        (
            "labctl/bump/talos-1.9.1-nocloud-amd64",
            "nocloud-amd64",
            "metal-arm64",
        ),
    ] {
        let manifest = git(
            lab.dir(),
            &[
                "--git-dir",
                repo.bare.to_str().unwrap(),
                "show",
                &format!("{branch}:images/images.yaml"),
            ],
        );
        let bumped = manifest
            .split("    - name: ")
            .find(|i| i.contains(wanted))
            .unwrap();
        assert!(bumped.contains("version: v1.9.2"), "{manifest}");
        let kept = manifest
            .split("    - name: ")
            .find(|i| i.contains(unchanged))
            .unwrap();
        assert!(kept.contains("version: v1.9.1"), "{manifest}");
    }
    let title = created[0]["gh"].as_array().unwrap();
    assert!(
        title
            .iter()
            .any(|a| a.as_str().unwrap_or("").contains("to v1.9.2")),
        "{title:?}"
    );
}
