//! Vendor fixtures over TLS: a Python HTTPS server on 127.0.0.1 (`vendor_server.py`) that answers
//! from a routes file the test rewrites, plus builders for the answers the vendors document —
//! GitHub's "List releases", the Talos Image Factory's `/versions`, Harvester's `version.yaml`
//! and `.sha512` list, VyOS's release notes. Sources for each shape are named on the builder.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};

/// A throwaway CA and a leaf certificate for `IP:127.0.0.1` signed by it, made with `openssl`
/// the same way as `a_redirect_from_https_to_http_is_refused` does.
pub struct Tls {
    /// The CA certificate (PEM): hand it to labctl as `SSL_CERT_FILE`.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

impl Tls {
    pub fn make(dir: &Path) -> Tls {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=labctl test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ]);
        std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext",
            "-out",
            "leaf.pem",
        ]);
        Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join("leaf.pem"),
            key: dir.join("leaf.key"),
        }
    }
}

/// One request as the server logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path with the query string, as sent.
    pub path: String,
    pub status: u16,
    /// Whether an `Authorization` header was sent (its value is never logged).
    pub authorization: bool,
    pub accept: Option<String>,
    pub user_agent: Option<String>,
    pub range: Option<String>,
}

/// An HTTPS server on 127.0.0.1 answering from routes this handle sets. Each route is written to
/// `routes.json` at once (atomically), and the server re-reads it on every request, so a test can
/// change answers between two labctl runs. Unknown paths answer GitHub's JSON 404. The server
/// process is killed when the handle is dropped.
pub struct VendorServer {
    /// `https://127.0.0.1:PORT`, no trailing slash.
    pub base: String,
    /// The CA that signed the server's certificate: labctl's `SSL_CERT_FILE`.
    pub ca: PathBuf,
    /// This server's own directory (certificates, routes, log, body files).
    pub dir: PathBuf,
    routes_path: PathBuf,
    log_path: PathBuf,
    routes: Mutex<BTreeMap<String, Value>>,
    files: AtomicUsize,
    child: Child,
}

impl Drop for VendorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/vendor_server.py"
);

impl VendorServer {
    /// Starts a server in a fresh subdirectory of `dir` (several servers may share `dir`).
    pub fn start(dir: &Path) -> VendorServer {
        std::fs::create_dir_all(dir).unwrap();
        let dir = std::fs::canonicalize(dir).unwrap();
        let own = (0..)
            .map(|n| dir.join(format!("vendor-{n}")))
            .find(|d| std::fs::create_dir(d).is_ok())
            .unwrap();
        let tls = Tls::make(&own.join("tls"));
        let routes_path = own.join("routes.json");
        let log_path = own.join("requests.jsonl");
        std::fs::write(&routes_path, "{}").unwrap();
        std::fs::write(&log_path, "").unwrap();
        let stderr = std::fs::File::create(own.join("server.err")).unwrap();
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .arg("--routes")
            .arg(&routes_path)
            .arg("--log")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let port: u16 = match read.ok().and_then(|_| line.trim().parse().ok()) {
            Some(port) => port,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vendor_server.py did not print its port: {}",
                    std::fs::read_to_string(own.join("server.err")).unwrap_or_default()
                );
            }
        };
        VendorServer {
            base: format!("https://127.0.0.1:{port}"),
            ca: tls.ca,
            dir: own,
            routes_path,
            log_path,
            routes: Mutex::new(BTreeMap::new()),
            files: AtomicUsize::new(0),
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sets a raw route: `{"status", "headers", "body" | "body_file", "delay", "drop_after",
    /// "no_ranges"}` (see vendor_server.py). `path` is `/path?query` (exact) or `/path` (any query).
    pub fn route(&self, path: &str, route: Value) {
        let mut routes = self.routes.lock().unwrap();
        routes.insert(path.to_string(), route);
        self.write_routes(&routes);
    }

    /// Stops answering `path` (it answers GitHub's 404 from now on).
    pub fn remove(&self, path: &str) {
        let mut routes = self.routes.lock().unwrap();
        routes.remove(path);
        self.write_routes(&routes);
    }

    fn write_routes(&self, routes: &BTreeMap<String, Value>) {
        let tmp = self.routes_path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(routes).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.routes_path).unwrap();
    }

    /// 200, `application/json; charset=utf-8`, the value serialized.
    pub fn json(&self, path_and_query: &str, value: &Value) {
        self.route(
            path_and_query,
            json!({
                "status": 200,
                "headers": {"Content-Type": "application/json; charset=utf-8"},
                "body": serde_json::to_string(value).unwrap(),
            }),
        );
    }

    pub fn text(&self, path: &str, status: u16, content_type: &str, body: &str) {
        self.route(
            path,
            json!({
                "status": status,
                "headers": {"Content-Type": content_type},
                "body": body,
            }),
        );
    }

    /// 200, `application/octet-stream`, these bytes (kept in a file in the server's directory).
    /// Honours `Range`, answers `HEAD` with the `Content-Length`.
    pub fn bytes(&self, path: &str, body: &[u8]) {
        let file = self.body_file(body);
        self.route(
            path,
            json!({
                "status": 200,
                "headers": {"Content-Type": "application/octet-stream"},
                "body_file": file,
            }),
        );
    }

    /// Writes `body` to a new file in the server's directory and returns its path, for raw
    /// routes with `body_file` (e.g. with `drop_after`).
    pub fn body_file(&self, body: &[u8]) -> String {
        let n = self.files.fetch_add(1, Ordering::SeqCst);
        let file = self.dir.join(format!("body-{n}.bin"));
        std::fs::write(&file, body).unwrap();
        file.to_str().unwrap().to_string()
    }

    /// Every request so far, in arrival order (logged on arrival, before any `delay`).
    pub fn log(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|v| Request {
                method: v["method"].as_str().unwrap_or_default().to_string(),
                path: v["path"].as_str().unwrap_or_default().to_string(),
                status: v["status"].as_u64().unwrap_or_default() as u16,
                authorization: v["authorization"].as_bool().unwrap_or_default(),
                accept: v["accept"].as_str().map(str::to_string),
                user_agent: v["user_agent"].as_str().map(str::to_string),
                range: v["range"].as_str().map(str::to_string),
            })
            .collect()
    }

    pub fn clear_log(&self) {
        std::fs::write(&self.log_path, "").unwrap();
    }

    /// Serves each asset's bytes at the path of its `browser_download_url`
    /// (`/{owner_repo}/releases/download/{tag}/{name}`), as `application/octet-stream`.
    pub fn serve_release_assets(&self, owner_repo: &str, tag: &str, assets: &[Asset]) {
        for asset in assets {
            self.bytes(
                &format!("/{owner_repo}/releases/download/{tag}/{}", asset.name),
                asset.bytes,
            );
        }
    }

    /// Serves `GET /repos/{owner_repo}/releases` the way GitHub paginates it: `per_page` releases
    /// a page (give them newest first), a `link` header with `rel="next"`/`"last"` (and
    /// `"prev"`/`"first"` after page 1) whose URLs use GitHub's `/repositories/{id}/releases`
    /// form, and the `x-ratelimit-*` headers. Page 1 answers whatever the query; pages 2… answer
    /// at the link URLs and at `/repos/{owner_repo}/releases?per_page={per_page}&page={n}`.
    pub fn serve_github_releases(&self, owner_repo: &str, releases: &[Value], per_page: usize) {
        assert!(per_page > 0);
        let pages: Vec<&[Value]> = if releases.is_empty() {
            vec![releases]
        } else {
            releases.chunks(per_page).collect()
        };
        let id = repo_id(owner_repo);
        let last = pages.len();
        let page_url = |n: usize| {
            format!(
                "{}/repositories/{id}/releases?per_page={per_page}&page={n}",
                self.base
            )
        };
        for (i, page) in pages.iter().enumerate() {
            let n = i + 1;
            let mut links = Vec::new();
            if n > 1 {
                links.push(format!("<{}>; rel=\"prev\"", page_url(n - 1)));
            }
            if n < last {
                links.push(format!("<{}>; rel=\"next\"", page_url(n + 1)));
                links.push(format!("<{}>; rel=\"last\"", page_url(last)));
            }
            if n > 1 {
                links.push(format!("<{}>; rel=\"first\"", page_url(1)));
            }
            let mut headers = github_headers(60, 59);
            if !links.is_empty() {
                headers["Link"] = Value::String(links.join(", "));
            }
            let route = json!({
                "status": 200,
                "headers": headers,
                "body": serde_json::to_string(&Value::Array(page.to_vec())).unwrap(),
            });
            if n == 1 {
                self.route(&format!("/repos/{owner_repo}/releases"), route);
            } else {
                self.route(
                    &format!("/repositories/{id}/releases?per_page={per_page}&page={n}"),
                    route.clone(),
                );
                self.route(
                    &format!("/repos/{owner_repo}/releases?per_page={per_page}&page={n}"),
                    route,
                );
            }
        }
    }

    /// GitHub's primary rate limit answer at `path` (`status` 403 or 429, both documented):
    /// `x-ratelimit-remaining: 0`, `x-ratelimit-reset` an hour ahead, the JSON message.
    pub fn github_rate_limited(&self, path: &str, status: u16) {
        self.route(
            path,
            json!({
                "status": status,
                "headers": github_headers(60, 0),
                "body": serde_json::to_string(&json!({
                    "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: \
                                Authenticated requests get a higher rate limit. Check out the \
                                documentation for more details.)",
                    "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting",
                }))
                .unwrap(),
            }),
        );
    }

    /// GitHub's 404 for a repository that does not exist (or is private and we are anonymous).
    pub fn github_not_found(&self, path: &str) {
        self.route(
            path,
            json!({
                "status": 404,
                "headers": github_headers(60, 59),
                "body": serde_json::to_string(&json!({
                    "message": "Not Found",
                    "documentation_url": "https://docs.github.com/rest/releases/releases#list-releases",
                    "status": "404",
                }))
                .unwrap(),
            }),
        );
    }

    /// The Image Factory's `GET /versions` (or `/versions?broken=true`) as the factory sends it:
    /// `json.NewEncoder(w).Encode(list)` with no Content-Type set, so Go sniffs
    /// `text/plain; charset=utf-8`, and a trailing newline.
    pub fn serve_talos_versions(&self, path_and_query: &str, list: &[&str]) {
        self.text(
            path_and_query,
            200,
            "text/plain; charset=utf-8",
            &talos_versions_body(list),
        );
    }

    /// The Image Factory's answer for an image of a version it does not offer: 404, plain text.
    pub fn talos_version_not_available(&self, path: &str, version: &str) {
        self.route(
            path,
            json!({
                "status": 404,
                "headers": {
                    "Content-Type": "text/plain; charset=utf-8",
                    "X-Content-Type-Options": "nosniff",
                },
                "body": talos_not_available(version),
            }),
        );
    }
}

/// Headers GitHub's API sends with a JSON answer, with the given rate-limit numbers.
pub fn github_headers(limit: u32, remaining: u32) -> Value {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    json!({
        "Content-Type": "application/json; charset=utf-8",
        "X-GitHub-Api-Version-Selected": "2022-11-28",
        "X-RateLimit-Limit": limit.to_string(),
        "X-RateLimit-Remaining": remaining.to_string(),
        "X-RateLimit-Used": (limit - remaining).to_string(),
        "X-RateLimit-Reset": reset.to_string(),
        "X-RateLimit-Resource": "core",
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn sha512_hex(bytes: &[u8]) -> String {
    hex(&Sha512::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A stable, plausible numeric id for a name (GitHub ids are positive 64-bit integers).
fn stable_id(salt: &str, name: &str) -> u64 {
    // FNV-1a
    let mut h: u64 = 0xcbf29ce484222325;
    for b in salt.bytes().chain([0u8]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    100_000_000 + h % 900_000_000
}

fn repo_id(owner_repo: &str) -> u64 {
    stable_id("repository", owner_repo)
}

/// One release asset for [`github_release`].
pub struct Asset<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
    /// Whether GitHub computed a digest: `"digest": "sha256:<hex>"`; otherwise `"digest": null`
    /// (the schema lists `digest` as required but nullable — assets uploaded before it existed).
    pub digest: bool,
    pub content_type: &'a str,
}

/// GitHub's bot account, the author/uploader of releases published from Actions.
fn github_actions_bot(base: &str) -> Value {
    let login = "github-actions[bot]";
    let api = format!("{base}/users/github-actions%5Bbot%5D");
    json!({
        "login": login,
        "id": 41898282,
        "node_id": "MDM6Qm90NDE4OTgyODI=",
        "avatar_url": "https://avatars.githubusercontent.com/in/15368?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": format!("{base}/apps/github-actions"),
        "followers_url": format!("{api}/followers"),
        "following_url": format!("{api}/following{{/other_user}}"),
        "gists_url": format!("{api}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/subscriptions"),
        "organizations_url": format!("{api}/orgs"),
        "repos_url": format!("{api}/repos"),
        "events_url": format!("{api}/events{{/privacy}}"),
        "received_events_url": format!("{api}/received_events"),
        "type": "Bot",
        "user_view_type": "public",
        "site_admin": false,
    })
}

/// One element of `GET /repos/{owner}/{repo}/releases`, with every field the "Release" schema
/// requires (github/docs `src/rest/data/fpt-2022-11-28/releases.json`). All URLs point at `base`
/// (the fixture), so `browser_download_url` is `{base}/{owner_repo}/releases/download/{tag}/{name}`
/// (github.com's form, `https://github.com/{owner}/{repo}/releases/download/{tag}/{name}`).
/// `published_at: None` is a draft's `null`; `created_at`/`updated_at` follow `published_at`.
#[allow(clippy::too_many_arguments)]
pub fn github_release(
    base: &str,
    owner_repo: &str,
    tag: &str,
    published_at: Option<&str>,
    prerelease: bool,
    draft: bool,
    body: &str,
    assets: &[Asset],
) -> Value {
    let id = stable_id(owner_repo, tag);
    let created = published_at.unwrap_or("2025-06-01T00:00:00Z");
    let api = format!("{base}/repos/{owner_repo}");
    let assets: Vec<Value> = assets
        .iter()
        .map(|a| {
            let asset_id = stable_id(&format!("{owner_repo}@{tag}"), a.name);
            json!({
                "url": format!("{api}/releases/assets/{asset_id}"),
                "browser_download_url":
                    format!("{base}/{owner_repo}/releases/download/{tag}/{}", a.name),
                "id": asset_id,
                "node_id": format!("RA_kwDO{asset_id:X}"),
                "name": a.name,
                "label": null,
                "state": "uploaded",
                "content_type": a.content_type,
                "size": a.bytes.len(),
                "digest": if a.digest {
                    Value::String(format!("sha256:{}", sha256_hex(a.bytes)))
                } else {
                    Value::Null
                },
                "download_count": 0,
                "created_at": created,
                "updated_at": created,
                "uploader": github_actions_bot(base),
            })
        })
        .collect();
    json!({
        "url": format!("{api}/releases/{id}"),
        "html_url": format!("{base}/{owner_repo}/releases/tag/{tag}"),
        "assets_url": format!("{api}/releases/{id}/assets"),
        "upload_url": format!("{api}/releases/{id}/assets{{?name,label}}"),
        "tarball_url": format!("{api}/tarball/{tag}"),
        "zipball_url": format!("{api}/zipball/{tag}"),
        "id": id,
        "node_id": format!("RE_kwDO{id:X}"),
        "tag_name": tag,
        "target_commitish": "main",
        "name": tag,
        "body": body,
        "draft": draft,
        "prerelease": prerelease,
        "immutable": false,
        "created_at": created,
        "published_at": published_at,
        "updated_at": created,
        "author": github_actions_bot(base),
        "assets": assets,
    })
}

/// The Image Factory's `/versions` list as a JSON value (`["v1.8.0", …]`; the factory sorts
/// ascending). To serve it exactly as the factory does, use
/// [`VendorServer::serve_talos_versions`].
pub fn talos_versions(list: &[&str]) -> Value {
    Value::Array(list.iter().map(|v| Value::String(v.to_string())).collect())
}

/// The exact `/versions` body: Go's `json.Encoder` output, compact, with a trailing newline.
pub fn talos_versions_body(list: &[&str]) -> String {
    format!(
        "{}\n",
        serde_json::to_string(&talos_versions(list)).unwrap()
    )
}

/// The factory's 404 text for an unknown version; it prints the version without its `v`.
pub fn talos_not_available(version: &str) -> String {
    format!(
        "version {} is not available\n",
        version.strip_prefix('v').unwrap_or(version)
    )
}

/// Harvester's `version.yaml` exactly as `scripts/package-harvester-os` writes it for a tag
/// build (no `minUpgradableVersion`, no `tags`: those come from the upgrade responder).
/// `release_date` is `YYYYMMDD`.
pub fn version_yaml(tag: &str, iso_url: &str, iso_sha512_hex: &str, release_date: &str) -> String {
    format!(
        "apiVersion: harvesterhci.io/v1beta1\n\
         kind: Version\n\
         metadata:\n  name: {tag}\n  namespace: harvester-system\n\
         spec:\n  isoChecksum: '{iso_sha512_hex}'\n  isoURL: {iso_url}\n  releaseDate: '{release_date}'\n"
    )
}

/// A `sha512sum` listing: `<128 hex>  <name>` per line (two spaces: text mode), in the order
/// given (the build script lists `harvester-<tag>*`, i.e. alphabetical).
pub fn sha512_list(entries: &[(&str, &[u8])]) -> String {
    entries
        .iter()
        .map(|(name, bytes)| format!("{}  {name}\n", sha512_hex(bytes)))
        .collect()
}

/// Harvester's release file names for `tag` on amd64, in `sha512sum harvester-<tag>*` order.
pub fn harvester_amd64_files(tag: &str) -> [String; 5] {
    [
        format!("harvester-{tag}-amd64-net-install.iso"),
        format!("harvester-{tag}-amd64.iso"),
        format!("harvester-{tag}-initrd-amd64"),
        format!("harvester-{tag}-rootfs-amd64.squashfs"),
        format!("harvester-{tag}-vmlinuz-amd64"),
    ]
}

/// VyOS rolling asset names for a tag: the ISO and its minisign signature.
pub fn vyos_assets(tag: &str) -> (String, String) {
    let iso = format!("vyos-{tag}-generic-amd64.iso");
    let sig = format!("{iso}.minisig");
    (iso, sig)
}

/// A VyOS rolling release body (the generated `CHANGELOG.md`): per repository, a `## vyos-1x` /
/// `## vyos-build` heading and `- <PR title>` / `   - PR: vyos/<repo>#<n>` pairs.
pub fn vyos_changelog(vyos_1x: &[(&str, u32)], vyos_build: &[(&str, u32)]) -> String {
    let section = |repo: &str, prs: &[(&str, u32)]| {
        let lines: Vec<String> = prs
            .iter()
            .map(|(title, n)| format!("- {title}\n   - PR: vyos/{repo}#{n}"))
            .collect();
        format!("## {repo}\n{}\n\n\n", lines.join("\n"))
    };
    format!(
        "{}{}",
        section("vyos-1x", vyos_1x),
        section("vyos-build", vyos_build)
    )
}
