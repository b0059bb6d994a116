//! S3-compatible servers for tests. Each test gets its own server process and bucket, killed
//! when the handle is dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "labctl-test-access";
pub const SECRET_KEY: &str = "labctl-test-secret-key";
pub const BUCKET: &str = "lab-images";
/// Garage's key formats: `GK` and 24 hex digits, a 64-hex-digit secret.
const GARAGE_KEY: &str = "GK0123456789abcdef01234567";
const GARAGE_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
    /// Ceph's RADOS Gateway on a one-node cluster (Debian's packages).
    Ceph,
    /// Garage, single node (it ignores `If-None-Match`).
    Garage,
}

pub struct S3Server {
    pub kind: Kind,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// The region the server signs for, when it is not the default.
    pub region: Option<String>,
    /// Killed last to first when the server is dropped.
    children: Vec<Child>,
    _data: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Finds a test server binary: an explicit variable, the CI cache `scripts/test` fills, or PATH.
fn binary(var: &str, cached: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(var) {
        return PathBuf::from(p);
    }
    let cache = std::env::var("LABCTL_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/labctl-ci")
        });
    let candidate = cache.join(cached);
    if candidate.exists() {
        return candidate;
    }
    let in_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.exists());
    in_path.unwrap_or_else(|| {
        panic!("{name} is not installed: run `scripts/test` (it installs the test servers), or set {var}")
    })
}

/// Waits until `endpoint` answers HTTP at all (RGW listens before it can serve).
fn wait_for_http(endpoint: &str, child: &mut Child, what: &str) {
    if let Err(status) = try_wait_for_http(endpoint, child, what) {
        panic!("{what} exited early: {status}");
    }
}

/// [`wait_for_http`], returning the exit status of a server that exited before answering.
fn try_wait_for_http(
    endpoint: &str,
    child: &mut Child,
    what: &str,
) -> Result<(), std::process::ExitStatus> {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            let mut response = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && response.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not answer on {endpoint}");
}

/// Creates the bucket with a signed request (servers that check signatures).
fn create_bucket_signed(server: &S3Server) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(
                server.region.clone().unwrap_or_else(|| "us-east-1".into()),
            ))
            .endpoint_url(&server.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &server.access_key,
                &server.secret_key,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .expect("the test bucket is created");
    });
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on {port}");
}

impl S3Server {
    pub fn start(kind: Kind) -> S3Server {
        match kind {
            Kind::S3sFs | Kind::Moto => Self::start_simple(kind),
            Kind::Ceph => Self::start_ceph(),
            Kind::Garage => Self::start_garage(),
        }
    }

    fn start_simple(kind: Kind) -> S3Server {
        let port = super::free_port();
        let (mut child, data) = match kind {
            Kind::S3sFs => {
                let data = tempfile::tempdir().unwrap();
                // s3s-fs keeps buckets as directories.
                std::fs::create_dir(data.path().join(BUCKET)).unwrap();
                let child = Command::new(binary("LABCTL_S3S_FS", "s3s-fs/bin/s3s-fs", "s3s-fs"))
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                    .arg(data.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("s3s-fs starts");
                (child, Some(data))
            }
            _ => {
                let child = Command::new(binary(
                    "LABCTL_MOTO_SERVER",
                    "moto-venv/bin/moto_server",
                    "moto_server",
                ))
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server starts");
                (child, None)
            }
        };
        wait_for_port(port, &mut child, &format!("{kind:?}"));
        let server = S3Server {
            kind,
            endpoint: format!("http://127.0.0.1:{port}"),
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            region: None,
            children: vec![child],
            _data: data,
        };
        if kind == Kind::Moto {
            create_bucket(&server.endpoint);
        }
        server
    }

    /// A one-node Ceph cluster in a temporary directory: one monitor, one memstore OSD, no
    /// authentication between daemons, and RGW's beast frontend on a free port. Up in ~2 s.
    fn start_ceph() -> S3Server {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path();
        let (mon_port, rgw_port) = (super::free_port(), super::free_port());
        let fsid = format!(
            "{}-0000-4000-8000-{:012x}",
            &labctl::checksum::Checksum::sha256(dir.to_string_lossy().as_bytes()).hex()[..8],
            mon_port
        );
        for sub in ["mon", "osd", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let conf = dir.join("ceph.conf");
        std::fs::write(
            &conf,
            include_str!("ceph.conf.in")
                .replace("@FSID@", &fsid)
                .replace("@MON_PORT@", &mon_port.to_string())
                .replace("@RGW_PORT@", &rgw_port.to_string())
                .replace("@DIR@", &dir.display().to_string()),
        )
        .unwrap();
        let conf = conf.to_str().unwrap().to_string();
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program)
                .args(args)
                .args(["-c", &conf])
                .output()
                .unwrap_or_else(|e| {
                    panic!("{program} runs (Ceph is installed by scripts/test): {e}")
                });
            assert!(
                out.status.success(),
                "{program} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let monmap = dir.join("monmap");
        let monmap = monmap.to_str().unwrap();
        let out = Command::new("monmaptool")
            .args([
                "--create",
                "--addv",
                "a",
                &format!("[v2:127.0.0.1:{mon_port}]"),
            ])
            .args(["--fsid", &fsid, monmap])
            .output()
            .expect("monmaptool runs (Ceph is installed by scripts/test)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        run("ceph-mon", &["--mkfs", "-i", "a", "--monmap", monmap]);
        let daemon = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .args(["-f", "-c", &conf])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{program} starts: {e}"))
        };
        let mut children = vec![daemon("ceph-mon", &["-i", "a"])];
        wait_for_port(mon_port, &mut children[0], "ceph-mon");
        run("ceph", &["osd", "create"]);
        run("ceph-osd", &["-i", "0", "--mkfs"]);
        children.push(daemon("ceph-osd", &["-i", "0"]));
        // Before radosgw: a user created while it runs waits for it to acknowledge the change.
        run(
            "radosgw-admin",
            &[
                "user",
                "create",
                "--uid=labctl",
                "--display-name=labctl",
                &format!("--access-key={ACCESS_KEY}"),
                &format!("--secret={SECRET_KEY}"),
            ],
        );
        // The free port can be taken between choosing and binding (exit 98, EADDRINUSE): then
        // another one is tried.
        let mut port = rgw_port;
        let mut attempts = 0;
        let endpoint = loop {
            attempts += 1;
            let frontend = format!("--rgw_frontends=beast endpoint=127.0.0.1:{port}");
            let mut rgw = daemon("radosgw", &["-n", "client.rgw", &frontend]);
            let endpoint = format!("http://127.0.0.1:{port}");
            match try_wait_for_http(&endpoint, &mut rgw, "radosgw") {
                Ok(()) => {
                    children.push(rgw);
                    break endpoint;
                }
                Err(status) if status.code() == Some(98) && attempts < 5 => {
                    port = super::free_port()
                }
                Err(status) => panic!("radosgw exited early: {status}"),
            }
        };
        let server = S3Server {
            kind: Kind::Ceph,
            endpoint,
            access_key: ACCESS_KEY.into(),
            secret_key: SECRET_KEY.into(),
            region: None,
            children,
            _data: Some(data),
        };
        create_bucket_signed(&server);
        server
    }

    /// Garage, one node with replication factor 1, a layout, an imported key and a bucket.
    fn start_garage() -> S3Server {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path();
        let (rpc_port, s3_port) = (super::free_port(), super::free_port());
        let conf = dir.join("garage.toml");
        let secret = labctl::checksum::Checksum::sha256(dir.to_string_lossy().as_bytes())
            .hex()
            .to_string();
        std::fs::write(
            &conf,
            format!(
                r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
                d = dir.display()
            ),
        )
        .unwrap();
        let garage = binary("LABCTL_GARAGE", "garage/bin/garage", "garage");
        let conf = conf.to_str().unwrap().to_string();
        let mut child = Command::new(&garage)
            .args(["-c", &conf, "server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("garage starts");
        wait_for_port(s3_port, &mut child, "garage");
        let cli = |args: &[&str]| -> String {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = Command::new(&garage)
                    .args(["-c", &conf])
                    .args(args)
                    .output()
                    .expect("garage runs");
                if out.status.success() {
                    return String::from_utf8_lossy(&out.stdout).into_owned();
                }
                // The RPC listener may come up a moment after the S3 one.
                assert!(
                    Instant::now() < deadline,
                    "garage {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        let node = cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        cli(&["layout", "apply", "--version", "1"]);
        let (key, secret) = (GARAGE_KEY, GARAGE_SECRET);
        cli(&["key", "import", "--yes", key, secret, "-n", "labctl"]);
        cli(&["bucket", "create", BUCKET]);
        cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", key,
        ]);
        S3Server {
            kind: Kind::Garage,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            access_key: key.into(),
            secret_key: secret.into(),
            region: Some("garage".into()),
            children: vec![child],
            _data: Some(data),
        }
    }

    /// Environment for a labctl process talking to this server.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("E2_ACCESS_KEY".into(), self.access_key.clone()),
            ("E2_SECRET_KEY".into(), self.secret_key.clone()),
            ("E2_ENDPOINT".into(), self.endpoint.clone()),
        ];
        if let Some(region) = &self.region {
            env.push(("E2_REGION".into(), region.clone()));
        }
        env
    }

    pub fn store_url(&self) -> String {
        format!("s3://{BUCKET}")
    }
}

/// moto starts empty: a plain path-style PUT creates the bucket (moto does not check signatures).
fn create_bucket(endpoint: &str) {
    let addr = endpoint.trim_start_matches("http://");
    // moto answered the readiness probe; under load its listener can still refuse a moment
    // longer (seen once with the whole suite on two cores).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("moto at {addr} refused the bucket creation ({e}); retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("moto at {addr} never accepted the bucket creation: {e}"),
        }
    };
    use std::io::{Read, Write};
    write!(
        stream,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "creating the bucket: {response}"
    );
}
