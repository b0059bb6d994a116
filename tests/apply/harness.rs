//! One `Lab` per test: a fixture HTTP server, a store (its own S3 server or a directory), a
//! manifest directory, and helpers to run labctl and read what it published.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use labctl::checksum::{Algorithm, Checksum};
use labctl::store::fs::FsStore;
use labctl::store::s3::{S3Settings, S3Store};
use labctl::store::Store;

use crate::support::fixture::{Faults, Fixture};
use crate::support::servers::{Kind, S3Server, BUCKET, SECRET_KEY};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    S3sFs,
    Moto,
    Fs,
    Ceph,
    /// Ignores conditional writes: apply runs with `--lock=false` there, as the docs say.
    Garage,
}

pub struct Lab {
    pub backend: Backend,
    pub fixture: Fixture,
    pub server: Option<S3Server>,
    /// Where labctl's S3 requests go (the server, or a proxy in front of it).
    pub endpoint: Option<String>,
    pub dir: tempfile::TempDir,
    pub runtime: tokio::runtime::Runtime,
    /// A prefix below the bucket (a subdirectory of the directory store) that every later run
    /// and read uses: one server, several independent stores.
    pub prefix: std::cell::RefCell<Option<String>>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn output(&self) -> String {
        format!("--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// Deterministic, compressible content: numbered lines of text, `size` bytes.
pub fn image_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 100);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut line = 0u64;
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(
            format!(
                "{seed}:{line:08} block {:016x} lab image payload\n",
                x % 4096
            )
            .as_bytes(),
        );
        line += 1;
    }
    out.truncate(size);
    out
}

pub fn xz(data: &[u8]) -> Vec<u8> {
    // Multi-block, as `xz -T` writes, so the parallel decoder has blocks to share out.
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(2)
        .block_size(1024 * 1024)
        .preset(1)
        .encoder()
        .unwrap();
    let mut out = Vec::new();
    liblzma::read::XzEncoder::new_stream(data, stream)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzEncoder::new(data, flate2::Compression::fast())
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 1).unwrap()
}

pub fn sha256(data: &[u8]) -> Checksum {
    Checksum::sha256(data)
}

pub fn sha512(data: &[u8]) -> Checksum {
    Checksum::of_bytes(Algorithm::Sha512, data)
}

/// One manifest entry.
pub struct Entry {
    pub name: &'static str,
    pub path: &'static str,
    pub checksum: Checksum,
    pub decompress: Option<&'static str>,
    pub expected: Option<Checksum>,
    pub destination: String,
    pub depends_on: Vec<&'static str>,
}

impl Entry {
    pub fn raw(name: &'static str, path: &'static str, body: &[u8]) -> Entry {
        Entry {
            name,
            path,
            checksum: sha256(body),
            decompress: None,
            expected: None,
            destination: format!("test/{name}.img"),
            depends_on: vec![],
        }
    }

    pub fn compressed(
        name: &'static str,
        path: &'static str,
        compressed: &[u8],
        format: &'static str,
        plain: &[u8],
    ) -> Entry {
        Entry {
            name,
            path,
            checksum: sha256(compressed),
            decompress: Some(format),
            expected: Some(sha256(plain)),
            destination: format!("test/{name}.img"),
            depends_on: vec![],
        }
    }
}

/// One Packer image in the manifest.
pub struct Build {
    pub name: &'static str,
    pub template: &'static str,
    pub artifact: &'static str,
    pub variables: Vec<(&'static str, String)>,
    pub depends_on: Vec<&'static str>,
}

impl Lab {
    pub fn new(backend: Backend) -> Lab {
        let server = match backend {
            Backend::S3sFs => Some(S3Server::start(Kind::S3sFs)),
            Backend::Moto => Some(S3Server::start(Kind::Moto)),
            Backend::Ceph => Some(S3Server::start(Kind::Ceph)),
            Backend::Garage => Some(S3Server::start(Kind::Garage)),
            Backend::Fs => None,
        };
        let endpoint = server.as_ref().map(|s| s.endpoint.clone());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        Lab {
            backend,
            fixture: Fixture::start(),
            server,
            endpoint,
            dir,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            prefix: Default::default(),
        }
    }

    /// Points every later run and read at `prefix` of the bucket (or of the store directory).
    pub fn use_prefix(&self, prefix: &str) {
        *self.prefix.borrow_mut() = Some(prefix.to_string());
    }

    fn store_dir(&self) -> PathBuf {
        let dir = self.dir.path().join("store");
        match &*self.prefix.borrow() {
            Some(p) => dir.join(p),
            None => dir,
        }
    }

    pub fn serve(&self, path: &str, body: Vec<u8>, faults: Faults) {
        self.fixture.add(path, body, faults);
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.dir.path().join("images.yaml")
    }

    pub fn write_manifest(&self, entries: &[Entry]) {
        self.write_manifest_with(entries, &[]);
    }

    /// Writes the manifest verbatim (for sources the `Entry` helper does not cover).
    pub fn write_manifest_text(&self, text: &str) {
        std::fs::write(self.manifest_path(), text).unwrap();
    }

    /// A Packer template directory below the lab (`packer/NAME`).
    pub fn template(&self, name: &str, hcl: &str) {
        let dir = self.dir.path().join("packer").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("build.pkr.hcl"), hcl).unwrap();
    }

    pub fn write_manifest_with(&self, entries: &[Entry], builds: &[Build]) {
        let images = if entries.is_empty() && builds.is_empty() {
            "images: []"
        } else {
            "images:"
        };
        let mut text =
            format!("apiVersion: labctl/v1alpha1\nkind: ImageManifest\nspec:\n  {images}\n");
        for e in entries {
            text.push_str(&format!(
                "    - name: {}\n      source:\n        type: http\n        url: {}\n        checksum: {}\n",
                e.name,
                self.fixture.url(e.path),
                e.checksum
            ));
            if let Some(d) = e.decompress {
                text.push_str(&format!("        decompress: {d}\n"));
            }
            text.push_str(&format!("      destination: {}\n", e.destination));
            if let Some(x) = &e.expected {
                text.push_str(&format!("      validation:\n        expected: {x}\n"));
            }
            if !e.depends_on.is_empty() {
                text.push_str(&format!("      dependsOn: [{}]\n", e.depends_on.join(", ")));
            }
        }
        for b in builds {
            text.push_str(&format!(
                "    - name: {}\n      source:\n        type: packer\n        path: packer/{}\n        artifact: {}\n        variables:\n",
                b.name, b.template, b.artifact
            ));
            for (k, v) in &b.variables {
                text.push_str(&format!("          {k}: \"{v}\"\n"));
            }
            text.push_str(&format!("      destination: test/{}.raw\n", b.name));
            if !b.depends_on.is_empty() {
                text.push_str(&format!("      dependsOn: [{}]\n", b.depends_on.join(", ")));
            }
        }
        std::fs::write(self.manifest_path(), text).unwrap();
    }

    pub fn store_arg(&self) -> String {
        match (self.backend, &*self.prefix.borrow()) {
            (Backend::Fs, _) => self.store_dir().display().to_string(),
            (_, Some(prefix)) => format!("s3://{BUCKET}/{prefix}"),
            (_, None) => format!("s3://{BUCKET}"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_labctl"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("LABCTL_ALLOW_INSECURE_LOOPBACK", "1")
            .env_remove("LABCTL_STORE")
            .env_remove("E2_BUCKET")
            .env_remove("GITHUB_ACTIONS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.env_remove("E2_REGION").env_remove("AWS_REGION");
        if let Some(endpoint) = &self.endpoint {
            let server = self.server.as_ref().expect("an S3 backend has a server");
            cmd.env("E2_ACCESS_KEY", &server.access_key)
                .env("E2_SECRET_KEY", &server.secret_key)
                .env("E2_ENDPOINT", endpoint);
            if let Some(region) = &server.region {
                cmd.env("E2_REGION", region);
            }
        } else {
            cmd.env_remove("E2_ACCESS_KEY")
                .env_remove("E2_SECRET_KEY")
                .env_remove("E2_ENDPOINT");
        }
        cmd
    }

    /// Runs `labctl ARGS --manifest … --store …`.
    /// Starts `labctl ARGS --manifest …` (and `--store …` with `with_store`), with extra
    /// environment variables.
    fn spawn_with(
        &self,
        args: &[&str],
        with_store: bool,
        env: &[(&str, &str)],
    ) -> std::process::Child {
        let manifest = self.manifest_path().display().to_string();
        let store = self.store_arg();
        let mut all: Vec<&str> = args.to_vec();
        // Garage ignores If-None-Match, so the lock cannot work there: its documented flow is
        // one apply at a time (a CI concurrency group) and --lock=false.
        if self.backend == Backend::Garage
            && matches!(args.first(), Some(&"apply" | &"cleanup"))
            && !args.iter().any(|a| a.starts_with("--lock"))
        {
            all.push("--lock=false");
        }
        all.extend(["--manifest", &manifest]);
        if with_store {
            all.extend(["--store", &store]);
        }
        let mut cmd = self.command(&all);
        cmd.envs(env.iter().copied());
        cmd.spawn().expect("labctl runs")
    }

    /// Runs `labctl ARGS --manifest … --store …`.
    pub fn labctl(&self, args: &[&str]) -> Run {
        self.labctl_env(args, &[])
    }

    /// Runs labctl with extra environment variables.
    pub fn labctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        finish(self.spawn_with(args, true, env), args)
    }

    /// Runs labctl with only `--manifest` (commands without a store: validate, pin).
    pub fn labctl_no_store(&self, args: &[&str]) -> Run {
        finish(self.spawn_with(args, false, &[]), args)
    }

    /// Runs labctl with exactly `args` (commands that take neither a manifest nor a store:
    /// verify).
    pub fn labctl_bare(&self, args: &[&str]) -> Run {
        finish(self.command(args).spawn().expect("labctl runs"), args)
    }

    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with(args, true, &[])
    }

    /// Starts labctl with extra environment variables.
    pub fn spawn_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        self.spawn_with(args, true, env)
    }

    /// Runs labctl against `store` (another prefix or directory) instead of the lab's store.
    pub fn labctl_at(&self, store: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--store", store]);
        finish(self.spawn_with(&all, false, env), args)
    }

    /// Every key under `prefix` (the lab's store).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let store = self.store();
        self.runtime
            .block_on(labctl::store::list_all(store.as_ref(), prefix))
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    pub fn apply(&self) -> Run {
        self.apply_with_env(&[])
    }

    /// `apply` with extra environment (e.g. a `PKR_VAR_` secret).
    pub fn apply_with_env(&self, env: &[(&str, &str)]) -> Run {
        self.labctl_env(&["apply", "--auto-approve", "--part-size", "5"], env)
    }

    pub fn store(&self) -> Arc<dyn Store> {
        match self.backend {
            Backend::Fs => {
                let dir = self.store_dir();
                std::fs::create_dir_all(&dir).unwrap();
                Arc::new(FsStore::new(dir))
            }
            _ => Arc::new(self.s3_store()),
        }
    }

    /// The lab's S3 server as a store (S3 backends only).
    pub fn s3_store(&self) -> S3Store {
        let server = self.server.as_ref().expect("an S3 backend");
        let settings = S3Settings {
            bucket: BUCKET.into(),
            prefix: self.prefix.borrow().clone(),
            endpoint: Some(server.endpoint.clone()),
            region: server.region.clone(),
        };
        self.runtime
            .block_on(S3Store::connect_with(
                settings,
                Some((server.access_key.clone(), server.secret_key.clone())),
            ))
            .unwrap()
    }

    /// `labctl apply` (without `--auto-approve`) on a pseudo-terminal from util-linux `script`,
    /// with stdin, stdout and stderr piped to the test.
    pub fn spawn_on_a_terminal(&self) -> std::process::Child {
        let command = format!(
            "{} apply --manifest {} --store {}",
            env!("CARGO_BIN_EXE_labctl"),
            self.manifest_path().display(),
            self.store_arg()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &command, "/dev/null"])
            .current_dir(self.dir())
            .env("LABCTL_ALLOW_INSECURE_LOOPBACK", "1")
            .env("NO_COLOR", "1")
            .env_remove("CI")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(server) = &self.server {
            cmd.envs(server.env());
        }
        cmd.spawn().expect("script (util-linux) runs")
    }

    /// The published object's bytes, if any.
    pub fn object(&self, destination: &str) -> Option<Vec<u8>> {
        self.store_bytes(&format!("images/{destination}"))
    }

    /// Any key's bytes, if it exists.
    pub fn store_bytes(&self, key: &str) -> Option<Vec<u8>> {
        let store = self.store();
        self.runtime
            .block_on(labctl::store::get_bytes(store.as_ref(), key, 1 << 30))
            .unwrap()
            .map(|(_, b)| b)
    }

    pub fn head(&self, key: &str) -> Option<labctl::store::ObjectMeta> {
        let store = self.store();
        self.runtime.block_on(store.head(key)).unwrap()
    }

    pub fn record(&self, destination: &str) -> Option<serde_json::Value> {
        let store = self.store();
        self.runtime
            .block_on(labctl::store::get_bytes(
                store.as_ref(),
                &format!("metadata/{destination}.json"),
                1 << 20,
            ))
            .unwrap()
            .map(|(_, b)| serde_json::from_slice(&b).unwrap())
    }

    /// Unfinished multipart uploads, when the backend can list them.
    pub fn pending_uploads(&self) -> Option<Vec<(String, String)>> {
        let store = self.store();
        self.runtime.block_on(store.list_uploads("")).unwrap()
    }

    pub fn delete(&self, key: &str) {
        let store = self.store();
        self.runtime.block_on(store.delete(key)).unwrap();
    }

    /// Writes `key` with user metadata, as someone outside labctl might.
    pub fn put_with_metadata(
        &self,
        key: &str,
        body: &[u8],
        meta: std::collections::BTreeMap<String, String>,
    ) {
        let store = self.store();
        let options = labctl::store::PutOptions {
            user_metadata: meta,
            ..Default::default()
        };
        self.runtime
            .block_on(store.put(key, bytes::Bytes::copy_from_slice(body), options))
            .unwrap();
    }

    pub fn put(&self, key: &str, body: &[u8]) {
        let store = self.store();
        self.runtime
            .block_on(store.put(key, bytes::Bytes::copy_from_slice(body), Default::default()))
            .unwrap();
    }

    pub fn wait_for_key(&self, key: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.head(key).is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Sends `signal` (`-INT`, `-TERM`) to a running labctl.
pub fn send_signal(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

/// Runs `cmd` under GNU time and returns its peak resident set in KiB; the command must succeed.
pub fn peak_rss_kib(cmd: &mut Command) -> u64 {
    let out = cmd
        .output()
        .expect("/usr/bin/time runs (Debian package `time`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {stderr}"))
}

/// `/usr/bin/time` set up to print what [`peak_rss_kib`] reads, then labctl.
pub fn timed_labctl() -> Command {
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "peak-rss-kib=%M", env!("CARGO_BIN_EXE_labctl")]);
    cmd
}

pub fn assert_ok(run: &Run) {
    assert_eq!(run.code, 0, "{}", run.output());
}

pub fn finish(child: std::process::Child, args: &[&str]) -> Run {
    let out = child.wait_with_output().expect("labctl finishes");
    let run = Run {
        code: out
            .status
            .code()
            .unwrap_or_else(|| panic!("labctl {args:?} killed: {}", out.status)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(run.code, 101, "labctl {args:?} panicked:\n{}", run.output());
    assert!(
        !run.stdout.contains(SECRET_KEY) && !run.stderr.contains(SECRET_KEY),
        "the secret key appears in labctl's output"
    );
    run
}
