//! Asking every channel the manifest tracks what it has released: one lookup per channel and
//! repository however many images share it, all at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use labctl_core::manifest::Image;
use labctl_core::upstream::listing::Listing;
use labctl_core::upstream::track::GITHUB_API;
use labctl_core::upstream::Channel;

use crate::source::channel::{self, GithubApi, LookupError};
use crate::source::http::RetryPolicy;

/// One thing to ask: a factory, or a repository's releases on one API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lookup {
    Talos { factory: String },
    Github { api: String, repository: String },
}

impl Lookup {
    pub fn of(channel: &Channel, github: &GithubApi) -> Lookup {
        match channel {
            Channel::Talos { factory, .. } => Lookup::Talos {
                factory: factory.clone(),
            },
            Channel::Github { repository, api }
            | Channel::Harvester {
                repository, api, ..
            } => Lookup::Github {
                api: api.clone().unwrap_or_else(|| github.default_base.clone()),
                repository: repository.clone(),
            },
        }
    }
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Talos { factory } => write!(f, "the Talos factory at {factory}"),
            Lookup::Github { api, repository } if api == GITHUB_API => {
                write!(f, "the GitHub releases of {repository}")
            }
            Lookup::Github { api, repository } => {
                write!(f, "the GitHub releases of {repository} (API {api})")
            }
        }
    }
}

/// What every lookup answered.
pub struct Listings {
    pub answers: BTreeMap<Lookup, Result<Listing, Arc<LookupError>>>,
    pub github: GithubApi,
}

impl Listings {
    pub fn for_image(
        &self,
        image: &Image,
    ) -> Option<(&Lookup, &Result<Listing, Arc<LookupError>>)> {
        let track = image.track.as_ref()?;
        self.answers
            .get_key_value(&Lookup::of(&track.channel, &self.github))
    }
}

/// Asks every channel `images` track, concurrently, each once; GitHub's at `github` unless a
/// channel names its own API.
pub async fn fetch(images: &[&Image], client: &reqwest::Client, github: GithubApi) -> Listings {
    let mut lookups: Vec<Lookup> = images
        .iter()
        .filter_map(|i| i.track.as_ref())
        .map(|t| Lookup::of(&t.channel, &github))
        .collect();
    lookups.sort();
    lookups.dedup();
    let mut tasks = tokio::task::JoinSet::new();
    for lookup in lookups {
        let client = client.clone();
        let github = github.clone();
        tasks.spawn(async move {
            let policy = RetryPolicy::default();
            let answer = match &lookup {
                Lookup::Talos { factory } => channel::talos_versions(&client, factory, &policy)
                    .await
                    .map(Listing::Talos),
                Lookup::Github { api, repository } => {
                    channel::github_releases(&client, &github, api, repository, &policy)
                        .await
                        .map(Listing::Github)
                }
            };
            (lookup, answer.map_err(Arc::new))
        });
    }
    let mut answers = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (lookup, answer) = done.expect("a lookup task panicked");
        answers.insert(lookup, answer);
    }
    Listings { answers, github }
}
