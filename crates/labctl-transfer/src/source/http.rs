//! Downloads that survive flaky servers: bounded retries with backoff on connect errors, 408, 429
//! and 5xx; a dropped body resumes with `Range` + `If-Range` so the hash simply continues; a
//! server that ignores `Range` makes the caller start over from byte 0.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::{Client, Response, StatusCode};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        self.initial_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("GET {url} answered HTTP {status}{}", said_suffix(said))]
    Status {
        url: String,
        status: u16,
        /// What the server said about it, when it said something short and readable (GitHub's
        /// JSON `message`, a line of text).
        said: Option<String>,
    },
    #[error("GET {url} failed after {attempts} attempts")]
    GaveUp {
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url} kept failing: HTTP {status} after {attempts} attempts")]
    GaveUpStatus {
        url: String,
        status: u16,
        attempts: u32,
    },
    #[error(
        "GET {url}: the body ended at byte {received} of {expected}, {attempts} times in a row"
    )]
    EndedEarly {
        url: String,
        received: u64,
        expected: u64,
        attempts: u32,
    },
    #[error("{url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("GET {url}: the server sent a range starting at {got}, expected {expected}")]
    BadRange {
        url: String,
        expected: u64,
        got: String,
    },
}

/// The client for vendor APIs (release lists, version files): the download client's rules,
/// and a bound on each whole request, since these answers are small.
pub fn api_client(timeout: Duration) -> Client {
    builder()
        .timeout(timeout)
        .build()
        .expect("the HTTP client can be built")
}

/// The client every download uses: TLS through rustls, timeouts on connect and on idle reads
/// (never on a whole multi-gigabyte transfer), and redirects that never leave HTTPS.
pub fn client() -> Client {
    builder().build().expect("the HTTP client can be built")
}

fn builder() -> reqwest::ClientBuilder {
    Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::custom(
            |attempt| match redirect_refusal(attempt.previous(), attempt.url()) {
                Some(why) => attempt.error(why),
                None => attempt.follow(),
            },
        ))
        .user_agent(concat!("labctl/", env!("CARGO_PKG_VERSION")))
}

/// Redirects a download may follow.
pub const MAX_REDIRECTS: usize = 10;

/// Why a redirect to `next` must not be followed, if it must not. Once a chain has been on
/// HTTPS it stays there: a checksum list or signature fetched over plain HTTP could be swapped
/// by anyone on the path, and with it the checksum the image is verified against.
pub fn redirect_refusal(previous: &[reqwest::Url], next: &reqwest::Url) -> Option<String> {
    if previous.len() >= MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if !matches!(next.scheme(), "http" | "https") {
        return Some(format!(
            "a redirect to {next}: only http and https are followed"
        ));
    }
    let was_https = previous.iter().any(|u| u.scheme() == "https");
    (was_https && next.scheme() != "https")
        .then(|| format!("a redirect from https to {next}: labctl never leaves HTTPS"))
}

/// How long a 429 or 503 asks to wait (`Retry-After` in seconds or as an HTTP date), capped
/// so that a server cannot park a run for hours.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(120);
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let wait = match value.trim().parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = labctl_core::timefmt::parse_http_date(value.trim())?;
            at.saturating_sub(labctl_core::timefmt::unix_now())
        }
    };
    Some(wait.min(CAP))
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// GET with retries on connection errors and retryable statuses (waiting as long as
/// `Retry-After` asks); other statuses are final. A 416 is returned to the caller, who asked for
/// a range and knows what it means.
pub async fn get_with_retry(
    client: &Client,
    url: &str,
    headers: HeaderMap,
    policy: &RetryPolicy,
) -> Result<Response, DownloadError> {
    send_with_retry(client, reqwest::Method::GET, url, headers, policy).await
}

/// [`get_with_retry`] for any method (a HEAD that asks a server for a file's size).
pub async fn send_with_retry(
    client: &Client,
    method: reqwest::Method,
    url: &str,
    headers: HeaderMap,
    policy: &RetryPolicy,
) -> Result<Response, DownloadError> {
    let mut attempt = 0;
    loop {
        let result = client
            .request(method.clone(), url)
            .headers(headers.clone())
            .send()
            .await;
        attempt += 1;
        let mut wait = policy.backoff(attempt - 1);
        match result {
            Ok(resp)
                if resp.status().is_success()
                    || resp.status() == StatusCode::RANGE_NOT_SATISFIABLE =>
            {
                return Ok(resp)
            }
            Ok(resp) if retryable(resp.status()) && attempt < policy.attempts => {
                if let Some(asked) = retry_after(resp.headers()) {
                    wait = asked;
                }
            }
            Ok(resp) if retryable(resp.status()) => {
                return Err(DownloadError::GaveUpStatus {
                    url: url.to_string(),
                    status: resp.status().as_u16(),
                    attempts: attempt,
                })
            }
            Ok(resp) => {
                let status = resp.status().as_u16();
                return Err(DownloadError::Status {
                    url: url.to_string(),
                    status,
                    said: what_it_said(resp).await,
                });
            }
            // A refused redirect is a decision, not a transient failure.
            Err(e) if e.is_redirect() => {
                return Err(DownloadError::GaveUp {
                    url: url.to_string(),
                    attempts: attempt,
                    source: e,
                })
            }
            Err(_) if attempt < policy.attempts => {}
            Err(source) => {
                return Err(DownloadError::GaveUp {
                    url: url.to_string(),
                    attempts: attempt,
                    source,
                })
            }
        }
        tokio::time::sleep(wait).await;
    }
}

/// `: what the server said`, or nothing.
pub fn said_suffix(said: &Option<String>) -> String {
    said.as_deref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

/// The reason an error answer gives, read from at most 4 KiB of its body: GitHub's JSON
/// `message` ("API rate limit exceeded for …"), else the first line of a short text; nothing
/// for an HTML page or anything long.
async fn what_it_said(mut resp: Response) -> Option<String> {
    const LIMIT: usize = 4096;
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > LIMIT {
            return None;
        }
    }
    said_in(&body)
}

fn said_in(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_str(text) {
        return o.get("message").and_then(|m| m.as_str()).map(clip);
    }
    let line = text.lines().next()?.trim();
    (!line.is_empty() && !line.starts_with('<')).then(|| clip(line))
}

/// At most 200 characters, without control characters.
fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

pub enum Chunk {
    Data(Bytes),
    /// The server answered a resume with the whole body: everything received so far must be
    /// discarded and the following chunks start again at byte 0.
    Restart,
}

/// One download in progress.
pub struct Download {
    client: Client,
    url: String,
    policy: RetryPolicy,
    response: Response,
    /// Bytes received so far (the next byte's offset).
    offset: u64,
    /// `Content-Length` of the whole body, when the server says.
    total: Option<u64>,
    /// What `If-Range` sends: a strong ETag, else `Last-Modified`.
    validator: Option<String>,
    info: SourceInfo,
    /// Resumes in a row that brought no new byte; any progress resets it.
    resumes: u32,
    /// `offset` when the last resume was asked for.
    resumed_at: u64,
}

/// What the server says about the file, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceInfo {
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `Content-Type`: an HTML page where an image was expected is an error page.
    pub content_type: Option<String>,
}

impl SourceInfo {
    pub fn of(headers: &HeaderMap, size: Option<u64>) -> SourceInfo {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        SourceInfo {
            size,
            etag: text(ETAG),
            last_modified: text(LAST_MODIFIED),
            content_type: text(reqwest::header::CONTENT_TYPE),
        }
    }
}

impl Download {
    pub async fn start(
        client: Client,
        url: &str,
        policy: RetryPolicy,
    ) -> Result<Download, DownloadError> {
        let response = get_with_retry(&client, url, HeaderMap::new(), &policy).await?;
        let total = response.content_length();
        let validator = validator(response.headers());
        let info = SourceInfo::of(response.headers(), total);
        Ok(Download {
            client,
            url: url.to_string(),
            policy,
            response,
            offset: 0,
            total,
            validator,
            info,
            resumes: 0,
            resumed_at: 0,
        })
    }

    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    pub fn total(&self) -> Option<u64> {
        self.total
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next piece of the body; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Chunk>, DownloadError> {
        loop {
            let cut = match self.response.chunk().await {
                Ok(Some(bytes)) => {
                    self.offset += bytes.len() as u64;
                    return Ok(Some(Chunk::Data(bytes)));
                }
                Ok(None) if self.total.is_none_or(|t| self.offset >= t) => return Ok(None),
                // The body ended early without an error from the transport: resume as well.
                Ok(None) => None,
                Err(e) => Some(e),
            };
            // A link that keeps dropping but keeps delivering is resumed for as long as it
            // does; only resumes in a row without progress count against the limit.
            if self.offset > self.resumed_at {
                self.resumes = 0;
            }
            if self.resumes + 1 >= self.policy.attempts {
                let attempts = self.resumes + 1;
                return Err(match cut {
                    Some(source) => DownloadError::GaveUp {
                        url: self.url.clone(),
                        attempts,
                        source,
                    },
                    None => DownloadError::EndedEarly {
                        url: self.url.clone(),
                        received: self.offset,
                        expected: self.total.unwrap_or_default(),
                        attempts,
                    },
                });
            }
            tokio::time::sleep(self.policy.backoff(self.resumes)).await;
            self.resumes += 1;
            self.resumed_at = self.offset;
            match self.resume().await? {
                Resumed::Continue => {}
                Resumed::Restart => return Ok(Some(Chunk::Restart)),
                Resumed::Complete => return Ok(None),
            }
        }
    }

    /// Re-requests the rest of the body.
    async fn resume(&mut self) -> Result<Resumed, DownloadError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            RANGE,
            format!("bytes={}-", self.offset)
                .parse()
                .expect("valid header"),
        );
        if let Some(v) = &self.validator {
            if let Ok(v) = v.parse() {
                headers.insert(IF_RANGE, v);
            }
        }
        let response = get_with_retry(&self.client, &self.url, headers, &self.policy).await?;
        if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            // `bytes */LENGTH`: nothing from our offset on. When the length is exactly what was
            // received, the body was complete and only its end was lost; otherwise the file
            // changed under us and the download starts over.
            let length = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes */"))
                .and_then(|n| n.trim().parse::<u64>().ok());
            if length == Some(self.offset) {
                self.total = Some(self.offset);
                return Ok(Resumed::Complete);
            }
            let fresh =
                get_with_retry(&self.client, &self.url, HeaderMap::new(), &self.policy).await?;
            self.restart_with(fresh);
            return Ok(Resumed::Restart);
        }
        if response.status() == StatusCode::PARTIAL_CONTENT {
            let range = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let start = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            if start != Some(self.offset) {
                return Err(DownloadError::BadRange {
                    url: self.url.clone(),
                    expected: self.offset,
                    got: range,
                });
            }
            self.response = response;
            Ok(Resumed::Continue)
        } else {
            // 200: Range ignored, or If-Range said the resource changed. Start over.
            self.restart_with(response);
            Ok(Resumed::Restart)
        }
    }

    fn restart_with(&mut self, response: Response) {
        self.total = response.content_length();
        self.validator = validator(response.headers());
        self.info = SourceInfo::of(response.headers(), self.total);
        self.response = response;
        self.offset = 0;
        self.resumed_at = 0;
    }
}

enum Resumed {
    /// The rest of the body follows.
    Continue,
    /// The whole body follows from byte 0.
    Restart,
    /// Nothing was missing.
    Complete,
}

fn validator(headers: &HeaderMap) -> Option<String> {
    let etag = headers.get(ETAG).and_then(|v| v.to_str().ok());
    match etag {
        Some(e) if !e.starts_with("W/") => Some(e.to_string()),
        _ => headers
            .get(LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// Fetches a small text document (a checksum list), refusing more than `limit` bytes.
pub async fn fetch_text(
    client: &Client,
    url: &str,
    policy: &RetryPolicy,
    limit: usize,
) -> Result<String, DownloadError> {
    let bytes = fetch_bytes(client, url, policy, limit).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Fetches a small document (a list, a signature) whole, refusing more than `limit` bytes. A
/// body cut short is fetched again from the start (these are small); it is never taken as the
/// whole document.
pub async fn fetch_bytes(
    client: &Client,
    url: &str,
    policy: &RetryPolicy,
    limit: usize,
) -> Result<Vec<u8>, DownloadError> {
    fetch_with_headers(client, url, HeaderMap::new(), policy, limit)
        .await
        .map(|(body, _)| body)
}

/// [`fetch_bytes`] with request headers, returning the response's headers too (an API's
/// pagination links).
pub async fn fetch_with_headers(
    client: &Client,
    url: &str,
    headers: HeaderMap,
    policy: &RetryPolicy,
    limit: usize,
) -> Result<(Vec<u8>, HeaderMap), DownloadError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut resp = get_with_retry(client, url, headers.clone(), policy).await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Err(DownloadError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
                said: None,
            });
        }
        let mut out = Vec::new();
        let cut = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    out.extend_from_slice(&chunk);
                    if out.len() > limit {
                        return Err(DownloadError::TooLarge {
                            url: url.to_string(),
                            limit,
                        });
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        match cut {
            None => return Ok((out, resp.headers().clone())),
            Some(source) if attempt >= policy.attempts => {
                return Err(DownloadError::GaveUp {
                    url: url.to_string(),
                    attempts: attempt,
                    source,
                })
            }
            Some(_) => tokio::time::sleep(policy.backoff(attempt - 1)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_answer_says_why_when_it_is_short_and_readable() {
        let github = br#"{"message":"API rate limit exceeded for 192.0.2.1.","documentation_url":"https://docs.github.com/rest"}"#;
        assert_eq!(
            said_in(github).as_deref(),
            Some("API rate limit exceeded for 192.0.2.1.")
        );
        assert_eq!(said_in(b"Not Found\n").as_deref(), Some("Not Found"));
        assert_eq!(said_in(b"<html><body>404</body></html>"), None);
        assert_eq!(said_in(b"{\"error\": 1}"), None);
        assert_eq!(said_in(b""), None);
        assert_eq!(said_in(&[0xff, 0xfe]), None);
        assert_eq!(said_in("x".repeat(500).as_bytes()).unwrap().len(), 200);
    }

    use super::*;

    fn urls(list: &[&str]) -> Vec<reqwest::Url> {
        list.iter().map(|u| u.parse().unwrap()).collect()
    }

    #[test]
    fn redirects_never_leave_https() {
        let next = |s: &str| s.parse::<reqwest::Url>().unwrap();
        let from_https = urls(&["https://vendor.example/a.iso"]);
        assert!(redirect_refusal(&from_https, &next("https://mirror.example/a.iso")).is_none());
        let refused = redirect_refusal(&from_https, &next("http://mirror.example/a.iso"));
        assert_eq!(
            refused.as_deref(),
            Some("a redirect from https to http://mirror.example/a.iso: labctl never leaves HTTPS")
        );
        // Anywhere in the chain: https → https → http is refused too.
        let chain = urls(&["https://a.example/x", "https://b.example/x"]);
        assert!(redirect_refusal(&chain, &next("http://c.example/x")).is_some());
        // An http source may be upgraded, and plain http stays possible for lab-local mirrors.
        let plain = urls(&["http://nas.lan/x"]);
        assert!(redirect_refusal(&plain, &next("https://nas.lan/x")).is_none());
        assert!(redirect_refusal(&plain, &next("http://nas2.lan/x")).is_none());
        assert!(redirect_refusal(&plain, &next("file:///etc/passwd")).is_some());
        let long: Vec<String> = (0..MAX_REDIRECTS)
            .map(|i| format!("https://h{i}.example/"))
            .collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        assert!(
            redirect_refusal(&urls(&long), &next("https://end.example/"))
                .unwrap()
                .contains("more than 10 redirects")
        );
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_is_capped() {
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(reqwest::header::RETRY_AFTER, v.parse().unwrap());
            h
        };
        assert_eq!(retry_after(&headers("3")), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after(&headers("86400")),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            retry_after(&headers("Thu, 01 Jan 1970 00:00:00 GMT")),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(retry_after(&headers("soon")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
