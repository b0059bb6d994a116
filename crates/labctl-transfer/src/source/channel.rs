//! Asking the vendors what they have released: the GitHub Releases API, the Talos Image
//! Factory's version lists, Harvester's `version.yaml`. Every request goes through the download
//! retry policy and is size-capped; every answer is parsed into the core's types or refused
//! with what was wrong and where.

use std::borrow::Cow;

use labctl_core::hint::Hint;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, LINK};
use reqwest::Client;

use crate::source::http::{fetch_with_headers, send_with_retry, DownloadError, RetryPolicy};
use labctl_core::upstream::listing::{
    parse_harvester_version, GithubRelease, HarvesterVersion, TalosVersions,
};

/// One page of releases (100 with their notes) is far below this.
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;
const MAX_SMALL_BYTES: usize = 1024 * 1024;
/// 10,000 releases, at 100 a page: more than any channel labctl tracks keeps (VyOS's rolling
/// builds, one a night, reach it in 27 years), and a bound on an API that never stops.
/// docs/sources.md documents it.
pub const MAX_PAGES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Download(#[from] DownloadError),
    #[error("{url} did not answer with what the vendor documents: {message}")]
    Malformed { url: String, message: String },
    #[error("{url} answered HTTP {status}{}", super::http::said_suffix(said))]
    Refused {
        url: String,
        status: u16,
        said: Option<String>,
    },
    #[error("{url}: more than {MAX_PAGES} pages of releases ({} releases); labctl stops there", MAX_PAGES * 100)]
    TooManyPages { url: String },
}

impl Hint for LookupError {
    fn hint(&self) -> Option<Cow<'static, str>> {
        let hint = match self {
            LookupError::Refused { status: 403 | 429, .. } => Some(
                "GitHub limits unauthenticated calls to 60 an hour: set GITHUB_TOKEN (in Actions, `env: GITHUB_TOKEN: ${{ github.token }}`)",
            ),
            LookupError::Refused { status: 401, .. } => {
                Some("GITHUB_TOKEN was refused: check that it is valid and not expired")
            }
            LookupError::Refused { status: 404, .. } => {
                Some("check the repository (track.repository) or the factory URL in the manifest")
            }
            LookupError::TooManyPages { .. } => Some(
                "the API kept naming a next page: check that track.api points at GitHub's API (or a GitHub Enterprise Server's)",
            ),
            _ => None,
        };
        hint.map(Cow::Borrowed)
    }
}

/// Where GitHub's API is and the token it is called with.
#[derive(Debug, Clone)]
pub struct GithubApi {
    /// `GITHUB_API_URL` (GitHub Enterprise Server), else api.github.com.
    pub default_base: String,
    /// `GITHUB_TOKEN`: sent only to `default_base`, never to a host a manifest names.
    pub token: Option<String>,
}

impl GithubApi {
    fn headers_for(&self, base: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "X-GitHub-Api-Version",
            HeaderValue::from_static("2022-11-28"),
        );
        if let Some(token) = &self.token {
            if same_origin(base, &self.default_base) {
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    headers.insert(AUTHORIZATION, v);
                }
            }
        }
        headers
    }
}

fn origin(url: &str) -> Option<(String, String, Option<u16>)> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((u.scheme().to_string(), u.host_str()?.to_string(), u.port()))
}

fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

/// A GET of a small document: its body and headers. A final status other than 2xx is
/// `Refused`.
async fn get_small(
    client: &Client,
    url: &str,
    headers: HeaderMap,
    policy: &RetryPolicy,
    limit: usize,
) -> Result<(Vec<u8>, HeaderMap), LookupError> {
    fetch_with_headers(client, url, headers, policy, limit)
        .await
        .map_err(|e| refused(url, e))
}

/// A final status other than 2xx is the vendor refusing, not a transfer failing.
fn refused(url: &str, e: DownloadError) -> LookupError {
    match e {
        DownloadError::Status { status, said, .. } => LookupError::Refused {
            url: url.to_string(),
            status,
            said,
        },
        other => other.into(),
    }
}

fn json<T: serde::de::DeserializeOwned>(url: &str, body: &[u8]) -> Result<T, LookupError> {
    serde_json::from_slice(body).map_err(|e| LookupError::Malformed {
        url: url.to_string(),
        message: if body.trim_ascii_start().starts_with(b"<") {
            "an HTML page, not JSON".to_string()
        } else {
            format!("invalid JSON ({e})")
        },
    })
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// Every release of `repository`, newest first as the API lists them, following `Link`
/// pagination on the same host.
pub async fn github_releases(
    client: &Client,
    api: &GithubApi,
    base: &str,
    repository: &str,
    policy: &RetryPolicy,
) -> Result<Vec<GithubRelease>, LookupError> {
    let base = base.trim_end_matches('/');
    let first = format!("{base}/repos/{repository}/releases?per_page=100");
    let mut url = first.clone();
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let (body, headers) =
            get_small(client, &url, api.headers_for(base), policy, MAX_PAGE_BYTES).await?;
        let page: Vec<GithubRelease> = json(&url, &body)?;
        out.extend(page);
        match next_link(&headers) {
            None => return Ok(out),
            Some(next) if same_origin(&next, base) => url = next,
            Some(next) => {
                return Err(LookupError::Malformed {
                    url,
                    message: format!("its next page is on another host ({next})"),
                })
            }
        }
    }
    Err(LookupError::TooManyPages { url: first })
}

/// The factory's versions and, separately, the ones it marks broken.
pub async fn talos_versions(
    client: &Client,
    factory: &str,
    policy: &RetryPolicy,
) -> Result<TalosVersions, LookupError> {
    let factory = factory.trim_end_matches('/');
    let all = format!("{factory}/versions");
    let broken = format!("{factory}/versions?broken=true");
    let headers = || {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        h
    };
    let (versions, broken_list) = tokio::try_join!(
        get_small(client, &all, headers(), policy, MAX_SMALL_BYTES),
        get_small(client, &broken, headers(), policy, MAX_SMALL_BYTES),
    )?;
    let versions: Vec<String> = json(&all, &versions.0)?;
    let mut broken: Vec<String> = json(&broken, &broken_list.0)?;
    if ignored_the_broken_parameter(&versions, &broken) {
        broken.clear();
    }
    Ok(TalosVersions { versions, broken })
}

/// A factory older than the broken list ignores `?broken=true` and answers with every version
/// again: exactly `/versions`, which is no broken list. Anything else is one, even where
/// `/versions` still names a broken version (a cache between the two answers) — and a version
/// on it is never proposed.
fn ignored_the_broken_parameter(versions: &[String], broken: &[String]) -> bool {
    let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    !broken.is_empty() && set(versions) == set(broken)
}

/// A Harvester release folder's `version.yaml`.
pub async fn harvester_version(
    client: &Client,
    folder: &str,
    policy: &RetryPolicy,
) -> Result<HarvesterVersion, LookupError> {
    let url = format!("{}/version.yaml", folder.trim_end_matches('/'));
    let (body, _) = get_small(client, &url, HeaderMap::new(), policy, MAX_SMALL_BYTES).await?;
    let text = String::from_utf8_lossy(&body);
    parse_harvester_version(&text).map_err(|e| LookupError::Malformed {
        url,
        message: e.to_string(),
    })
}

/// The `Content-Length` a HEAD of `url` answers with (the Talos factory serves HEAD itself,
/// without a redirect), retried like a download; `None` when the server gives none.
pub async fn head_length(
    client: &Client,
    url: &str,
    policy: &RetryPolicy,
) -> Result<Option<u64>, LookupError> {
    let response = send_with_retry(client, reqwest::Method::HEAD, url, HeaderMap::new(), policy)
        .await
        .map_err(|e| refused(url, e))?;
    Ok(response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok()))
}

/// A small text document (a checksum list) over the same retries, refused when it is not 2xx.
pub async fn fetch_small_text(
    client: &Client,
    url: &str,
    policy: &RetryPolicy,
) -> Result<String, LookupError> {
    let (body, _) = get_small(client, url, HeaderMap::new(), policy, MAX_PAGE_BYTES).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_name_the_next_page() {
        let mut h = HeaderMap::new();
        h.insert(
            LINK,
            HeaderValue::from_static(
                "<https://api.github.com/repositories/1/releases?per_page=100&page=2>; rel=\"next\", <https://api.github.com/repositories/1/releases?per_page=100&page=5>; rel=\"last\"",
            ),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1/releases?per_page=100&page=2")
        );
        h.insert(
            LINK,
            HeaderValue::from_static("<https://api.github.com/x?page=1>; rel=\"prev\""),
        );
        assert_eq!(next_link(&h), None);
        assert_eq!(next_link(&HeaderMap::new()), None);
    }

    #[test]
    fn the_token_goes_only_to_the_api_it_belongs_to() {
        let api = GithubApi {
            default_base: "https://api.github.com".into(),
            token: Some("t0ken".into()),
        };
        assert!(api
            .headers_for("https://api.github.com/")
            .contains_key(AUTHORIZATION));
        assert!(!api
            .headers_for("https://evil.example")
            .contains_key(AUTHORIZATION));
        assert!(!api
            .headers_for("https://api.github.com:8443")
            .contains_key(AUTHORIZATION));
    }

    #[test]
    fn html_is_named_as_such() {
        let err = json::<Vec<String>>("https://f/versions", b"  <html>busy</html>").unwrap_err();
        assert!(err.to_string().contains("an HTML page, not JSON"), "{err}");
        let err = json::<Vec<String>>("https://f/versions", b"{\"a\":").unwrap_err();
        assert!(err.to_string().contains("invalid JSON"), "{err}");
    }

    #[test]
    fn a_broken_list_is_dropped_only_when_it_repeats_every_version() {
        let v = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let versions = v(&["v1.9.0", "v1.9.1", "v1.9.2"]);
        // An old factory: the parameter ignored, every version again (in any order).
        assert!(ignored_the_broken_parameter(
            &versions,
            &v(&["v1.9.2", "v1.9.0", "v1.9.1"])
        ));
        // A cache between the two answers: /versions still lists a broken one. Kept.
        assert!(!ignored_the_broken_parameter(&versions, &v(&["v1.9.2"])));
        assert!(!ignored_the_broken_parameter(
            &versions,
            &v(&["v1.9.1", "v1.9.2"])
        ));
        assert!(!ignored_the_broken_parameter(&versions, &v(&["v1.8.0"])));
        assert!(!ignored_the_broken_parameter(&versions, &[]));
    }
}
