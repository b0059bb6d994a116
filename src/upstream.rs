//! The channel lookups (`labctl_transfer::source::upstream`) with what the command line and the
//! environment decide: which GitHub API and token, how long to wait.

use std::time::Duration;

use labctl_core::upstream::track::GITHUB_API;
use labctl_transfer::source::channel::GithubApi;
pub use labctl_transfer::source::upstream::{Listings, Lookup};

/// The GitHub API and token from the environment.
pub fn github_api() -> GithubApi {
    let env = crate::settings::env();
    GithubApi {
        default_base: env
            .github_api_url
            .clone()
            .unwrap_or_else(|| GITHUB_API.to_string())
            .trim_end_matches('/')
            .to_string(),
        token: env.github_token.clone(),
    }
}

/// Asks every channel `images` track, concurrently, each once (GitHub's API from the
/// environment: `GITHUB_API_URL`, `GITHUB_TOKEN`).
pub async fn fetch(images: &[&labctl_core::manifest::Image], client: &reqwest::Client) -> Listings {
    labctl_transfer::source::upstream::fetch(images, client, github_api()).await
}

/// `--timeout`: `30s`, `2m`, or plain seconds.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 30s, 2m)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        _ => return Err(format!("`{text}` is not a duration (e.g. 30s, 2m)")),
    };
    if secs == 0 {
        return Err("the timeout must be at least 1s".into());
    }
    Ok(Duration::from_secs(secs))
}
