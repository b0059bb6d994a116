//! S3-compatible servers for tests. Each test gets its own server process and bucket, killed
//! when the handle is dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "labctl-test-access";
pub const SECRET_KEY: &str = "labctl-test-secret-key";
pub const BUCKET: &str = "lab-images";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
}

pub struct S3Server {
    pub kind: Kind,
    pub endpoint: String,
    child: Child,
    _data: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
            Kind::Moto => {
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
            child,
            _data: data,
        };
        if kind == Kind::Moto {
            create_bucket(&server.endpoint);
        }
        server
    }

    /// Environment for a labctl process talking to this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("E2_ACCESS_KEY".into(), ACCESS_KEY.into()),
            ("E2_SECRET_KEY".into(), SECRET_KEY.into()),
            ("E2_ENDPOINT".into(), self.endpoint.clone()),
        ]
    }

    pub fn store_url(&self) -> String {
        format!("s3://{BUCKET}")
    }
}

/// moto starts empty: a plain path-style PUT creates the bucket (moto does not check signatures).
fn create_bucket(endpoint: &str) {
    let addr = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
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
