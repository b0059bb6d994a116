//! Asking a source whether it still serves an image, without downloading it: a HEAD, or a
//! one-byte ranged GET where HEAD is refused; retried like a download (`drift --check-sources`).

use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{Client, Method};

use super::http::{send_with_retry, DownloadError, RetryPolicy, SourceInfo};

/// What the source answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// 404 or 410: the image cannot be downloaded again.
    Gone { status: u16 },
    /// It answered; size, ETag and Last-Modified as it gives them now.
    Serves(SourceInfo),
}

pub async fn probe(
    client: &Client,
    url: &str,
    policy: &RetryPolicy,
) -> Result<Probed, DownloadError> {
    let head = send_with_retry(client, Method::HEAD, url, HeaderMap::new(), policy).await;
    let response = match head {
        // Some servers refuse HEAD on files they serve: ask for one byte instead.
        Err(DownloadError::Status {
            status: 403 | 405 | 501,
            ..
        }) => {
            let mut headers = HeaderMap::new();
            headers.insert(RANGE, "bytes=0-0".parse().expect("valid"));
            send_with_retry(client, Method::GET, url, headers, policy).await
        }
        other => other,
    };
    let response = match response {
        Ok(r) => r,
        Err(DownloadError::Status {
            status: status @ (404 | 410),
            ..
        }) => return Ok(Probed::Gone { status }),
        Err(e) => return Err(e),
    };
    let headers = response.headers();
    // A ranged GET's whole size is in Content-Range; a HEAD's in Content-Length.
    let size = headers
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('/').next())
        .and_then(|v| v.parse().ok())
        .or_else(|| {
            headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        });
    Ok(Probed::Serves(SourceInfo::of(headers, size)))
}
