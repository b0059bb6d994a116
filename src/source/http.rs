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
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
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
    #[error("{url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("GET {url}: the server sent a range starting at {got}, expected {expected}")]
    BadRange {
        url: String,
        expected: u64,
        got: String,
    },
}

/// The client every download uses: TLS through rustls, timeouts on connect and on idle reads
/// (never on a whole multi-gigabyte transfer).
pub fn client() -> Client {
    Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("labctl/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client can be built")
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// GET with retries on connection errors and retryable statuses; other statuses are final.
pub async fn get_with_retry(
    client: &Client,
    url: &str,
    headers: HeaderMap,
    policy: &RetryPolicy,
) -> Result<Response, DownloadError> {
    let mut attempt = 0;
    loop {
        let result = client.get(url).headers(headers.clone()).send().await;
        attempt += 1;
        match result {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) if retryable(resp.status()) && attempt < policy.attempts => {}
            Ok(resp) if retryable(resp.status()) => {
                return Err(DownloadError::GaveUpStatus {
                    url: url.to_string(),
                    status: resp.status().as_u16(),
                    attempts: attempt,
                })
            }
            Ok(resp) => {
                return Err(DownloadError::Status {
                    url: url.to_string(),
                    status: resp.status().as_u16(),
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
        tokio::time::sleep(policy.backoff(attempt - 1)).await;
    }
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
    resumes: u32,
}

/// What the server says about the file, for the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceInfo {
    pub size: Option<u64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
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
            match self.response.chunk().await {
                Ok(Some(bytes)) => {
                    self.offset += bytes.len() as u64;
                    return Ok(Some(Chunk::Data(bytes)));
                }
                Ok(None) if self.total.is_none_or(|t| self.offset >= t) => return Ok(None),
                // The body ended early without an error from the transport: resume as well.
                Ok(None) => {}
                Err(e) if self.resumes + 1 >= self.policy.attempts => {
                    return Err(DownloadError::GaveUp {
                        url: self.url.clone(),
                        attempts: self.resumes + 1,
                        source: e,
                    })
                }
                Err(_) => {}
            }
            tokio::time::sleep(self.policy.backoff(self.resumes)).await;
            self.resumes += 1;
            if let Some(restart) = self.resume().await? {
                return Ok(Some(restart));
            }
        }
    }

    /// Re-requests the rest of the body. Returns `Some(Restart)` when the server sent the whole
    /// body instead.
    async fn resume(&mut self) -> Result<Option<Chunk>, DownloadError> {
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
            Ok(None)
        } else {
            // 200: Range ignored, or If-Range said the resource changed. Start over.
            self.total = response.content_length();
            self.validator = validator(response.headers());
            self.info = SourceInfo::of(response.headers(), self.total);
            self.response = response;
            self.offset = 0;
            Ok(Some(Chunk::Restart))
        }
    }
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

/// Fetches a small document (a list, a signature) whole, refusing more than `limit` bytes.
pub async fn fetch_bytes(
    client: &Client,
    url: &str,
    policy: &RetryPolicy,
    limit: usize,
) -> Result<Vec<u8>, DownloadError> {
    let mut resp = get_with_retry(client, url, HeaderMap::new(), policy).await?;
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|source| DownloadError::GaveUp {
        url: url.to_string(),
        attempts: 1,
        source,
    })? {
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(DownloadError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
    }
    Ok(out)
}
