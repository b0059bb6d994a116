//! The channel lookups (`labctl_transfer::source::upstream`) with what the command line and the
//! environment decide: which GitHub API and token, how long to wait.

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
