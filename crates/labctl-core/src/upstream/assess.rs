//! Given what a channel lists and the image's policy: the newest version the policy allows,
//! the newest overall, and why each newer one is held back. Pure: the caller passes the time.

use std::fmt;

use serde::Serialize;

use super::policy::{format_age, MinorPolicy, Policy};
use super::version::Version;

/// One release as a channel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub tag: String,
    /// When the vendor published it (seconds since the epoch), if the channel says.
    pub published_at: Option<u64>,
    /// The vendor flags it a pre-release (GitHub's `prerelease`), whatever the tag says.
    pub prerelease: bool,
    /// On the vendor's broken list (the Talos factory's `/versions?broken=true`).
    pub broken: bool,
    /// What this release lacks that the image needs (the asset its URL names), if anything.
    pub missing: Option<String>,
}

/// Why a newer release is not proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Hold {
    Prerelease,
    Broken,
    TooYoung {
        age_seconds: u64,
        min_age_seconds: u64,
    },
    /// `minAge` is set and the channel gives no release time: never old enough by accident.
    NoReleaseTime {
        min_age_seconds: u64,
    },
    Policy {
        minor: MinorPolicy,
    },
    Missing {
        what: String,
    },
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hold::Prerelease => write!(f, "a pre-release (`prereleases: true` accepts it)"),
            Hold::Broken => write!(f, "marked broken by the vendor"),
            Hold::TooYoung {
                age_seconds,
                min_age_seconds,
            } => write!(
                f,
                "too young: published {} ago, `minAge` is {}",
                format_age(*age_seconds),
                format_age(*min_age_seconds)
            ),
            Hold::NoReleaseTime { min_age_seconds } => write!(
                f,
                "the channel publishes no release time, so `minAge: {}` cannot be met",
                format_age(*min_age_seconds)
            ),
            Hold::Policy { minor } => match minor {
                MinorPolicy::Same => write!(f, "another minor (`minor: same`)"),
                MinorPolicy::Next => write!(f, "more than one minor ahead (`minor: next`)"),
                MinorPolicy::Any => write!(f, "not allowed by the policy"),
            },
            Hold::Missing { what } => write!(f, "the release has no {what}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_at: Option<u64>,
}

/// A newer release that is not proposed, with every reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Held {
    pub version: String,
    pub reasons: Vec<Hold>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub current: String,
    /// The channel still lists the current version.
    pub current_listed: bool,
    pub current_broken: bool,
    /// The newest release newer than the current one that the policy allows.
    pub newest_allowed: Option<Candidate>,
    /// The newest release the channel lists, allowed or not.
    pub newest: Option<Candidate>,
    /// Releases newer than the current one (and than `newest_allowed`) that are held back,
    /// newest first.
    pub held: Vec<Held>,
    /// Tags that are not versions in the channel's order: ignored.
    pub ignored: Vec<String>,
}

impl Assessment {
    pub fn update_available(&self) -> bool {
        self.newest_allowed.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the current version `{current}` is not a {order} version (like {example})")]
pub struct NotAVersion {
    pub current: String,
    pub order: &'static str,
    pub example: &'static str,
}

pub fn assess(
    current: &str,
    releases: &[Release],
    policy: &Policy,
    now: u64,
) -> Result<Assessment, NotAVersion> {
    let order = policy.order;
    let current_version = order.parse(current).ok_or(NotAVersion {
        current: current.to_string(),
        order: order.name(),
        example: order.example(),
    })?;
    let mut ignored = Vec::new();
    let mut parsed: Vec<(Version, &Release)> = Vec::new();
    for release in releases {
        match order.parse(&release.tag) {
            Some(v) => {
                if !parsed.iter().any(|(_, r)| r.tag == release.tag) {
                    parsed.push((v, release));
                }
            }
            None => ignored.push(release.tag.clone()),
        }
    }
    // Newest first; equal versions (`v1.9.1` and `1.9.1`) keep the channel's order.
    parsed.sort_by(|(a, _), (b, _)| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));

    let current_release = parsed.iter().find(|(v, _)| *v == current_version);
    let candidate = |r: &Release| Candidate {
        version: r.tag.clone(),
        published_at: r.published_at,
    };
    let mut out = Assessment {
        current: current.to_string(),
        current_listed: current_release.is_some(),
        current_broken: current_release.is_some_and(|(_, r)| r.broken),
        newest_allowed: None,
        newest: parsed.first().map(|(_, r)| candidate(r)),
        held: Vec::new(),
        ignored,
    };
    for (version, release) in &parsed {
        if version.partial_cmp(&current_version) != Some(std::cmp::Ordering::Greater) {
            break;
        }
        let reasons = holds(version, release, &current_version, policy, now);
        if reasons.is_empty() {
            out.newest_allowed = Some(candidate(release));
            break;
        }
        out.held.push(Held {
            version: release.tag.clone(),
            reasons,
        });
    }
    Ok(out)
}

fn holds(
    version: &Version,
    release: &Release,
    current: &Version,
    policy: &Policy,
    now: u64,
) -> Vec<Hold> {
    let mut reasons = Vec::new();
    if let (Some(v), Some(c)) = (version.semver(), current.semver()) {
        let allowed = match policy.minor {
            MinorPolicy::Same => (v.major, v.minor) == (c.major, c.minor),
            MinorPolicy::Next => v.major == c.major && v.minor <= c.minor + 1,
            MinorPolicy::Any => true,
        };
        if !allowed {
            reasons.push(Hold::Policy {
                minor: policy.minor,
            });
        }
    }
    if (release.prerelease || version.is_prerelease()) && !policy.prereleases {
        reasons.push(Hold::Prerelease);
    }
    if release.broken {
        reasons.push(Hold::Broken);
    }
    if let Some(min_age) = policy.min_age {
        match release.published_at {
            None => reasons.push(Hold::NoReleaseTime {
                min_age_seconds: min_age,
            }),
            Some(at) => {
                let age = now.saturating_sub(at);
                if age < min_age {
                    reasons.push(Hold::TooYoung {
                        age_seconds: age,
                        min_age_seconds: min_age,
                    });
                }
            }
        }
    }
    if let Some(what) = &release.missing {
        reasons.push(Hold::Missing { what: what.clone() });
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::version::VersionOrder;

    const NOW: u64 = 1_800_000_000;
    const DAY: u64 = 86_400;

    fn rel(tag: &str) -> Release {
        Release {
            tag: tag.into(),
            published_at: Some(NOW - 30 * DAY),
            prerelease: false,
            broken: false,
            missing: None,
        }
    }

    fn semver(minor: MinorPolicy) -> Policy {
        Policy {
            minor,
            ..Policy::default()
        }
    }

    fn allowed(a: &Assessment) -> Option<&str> {
        a.newest_allowed.as_ref().map(|c| c.version.as_str())
    }

    #[test]
    fn the_minor_policy_bounds_the_bump() {
        let releases: Vec<Release> = [
            "v1.9.0", "v1.9.1", "v1.9.5", "v1.10.0", "v1.10.3", "v1.11.2", "v2.0.0",
        ]
        .into_iter()
        .map(rel)
        .collect();
        let same = assess("v1.9.1", &releases, &semver(MinorPolicy::Same), NOW).unwrap();
        assert_eq!(allowed(&same), Some("v1.9.5"));
        assert_eq!(same.newest.as_ref().unwrap().version, "v2.0.0");
        assert_eq!(
            same.held
                .iter()
                .map(|h| h.version.as_str())
                .collect::<Vec<_>>(),
            ["v2.0.0", "v1.11.2", "v1.10.3", "v1.10.0"]
        );
        assert_eq!(
            same.held[0].reasons,
            [Hold::Policy {
                minor: MinorPolicy::Same
            }]
        );
        let next = assess("v1.9.1", &releases, &semver(MinorPolicy::Next), NOW).unwrap();
        assert_eq!(allowed(&next), Some("v1.10.3"));
        let any = assess("v1.9.1", &releases, &semver(MinorPolicy::Any), NOW).unwrap();
        assert_eq!(allowed(&any), Some("v2.0.0"));
        assert!(any.held.is_empty());
        // Already at the newest allowed: nothing to do, and the current one is listed.
        let current = assess("v1.9.5", &releases, &semver(MinorPolicy::Same), NOW).unwrap();
        assert_eq!(allowed(&current), None);
        assert!(current.current_listed && !current.update_available());
    }

    #[test]
    fn prereleases_broken_and_young_releases_are_held_back_with_their_reasons() {
        let mut releases = vec![rel("v1.9.1"), rel("v1.9.2"), rel("v1.9.3"), rel("v1.9.4")];
        releases.push(rel("v1.9.5-rc.1"));
        releases[1].prerelease = true; // flagged by the vendor, though the tag looks final
        releases[2].broken = true;
        releases[3].published_at = Some(NOW - DAY);
        let policy = Policy {
            min_age: Some(3 * DAY),
            ..Policy::default()
        };
        let a = assess("v1.9.1", &releases, &policy, NOW).unwrap();
        assert_eq!(allowed(&a), None);
        let reasons: Vec<(&str, &[Hold])> = a
            .held
            .iter()
            .map(|h| (h.version.as_str(), h.reasons.as_slice()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("v1.9.5-rc.1", &[Hold::Prerelease][..]),
                (
                    "v1.9.4",
                    &[Hold::TooYoung {
                        age_seconds: DAY,
                        min_age_seconds: 3 * DAY
                    }][..]
                ),
                ("v1.9.3", &[Hold::Broken][..]),
                ("v1.9.2", &[Hold::Prerelease][..]),
            ]
        );
        assert_eq!(
            a.held[1].reasons[0].to_string(),
            "too young: published 1d ago, `minAge` is 3d"
        );
        // Accepting pre-releases and waiting long enough lets them through.
        let patient = Policy {
            prereleases: true,
            ..Policy::default()
        };
        let b = assess("v1.9.1", &releases, &patient, NOW).unwrap();
        assert_eq!(allowed(&b), Some("v1.9.5-rc.1"));
    }

    #[test]
    fn a_release_without_a_time_is_never_old_enough_by_accident() {
        let mut releases = vec![rel("v1.9.1"), rel("v1.9.2")];
        releases[1].published_at = None;
        let policy = Policy {
            min_age: Some(7 * DAY),
            ..Policy::default()
        };
        let a = assess("v1.9.1", &releases, &policy, NOW).unwrap();
        assert_eq!(allowed(&a), None);
        assert_eq!(
            a.held[0].reasons,
            [Hold::NoReleaseTime {
                min_age_seconds: 7 * DAY
            }]
        );
        assert!(a.held[0].reasons[0].to_string().contains("minAge: 7d"));
        // Without minAge the missing time does not matter.
        let b = assess("v1.9.1", &releases, &Policy::default(), NOW).unwrap();
        assert_eq!(allowed(&b), Some("v1.9.2"));
    }

    #[test]
    fn the_current_pin_gone_or_broken_upstream_is_reported() {
        let mut releases = vec![rel("v1.9.2"), rel("v1.9.3")];
        let gone = assess("v1.9.1", &releases, &Policy::default(), NOW).unwrap();
        assert!(!gone.current_listed);
        assert_eq!(allowed(&gone), Some("v1.9.3"));
        releases.push(Release {
            broken: true,
            ..rel("v1.9.1")
        });
        let broken = assess("v1.9.1", &releases, &Policy::default(), NOW).unwrap();
        assert!(broken.current_listed && broken.current_broken);
    }

    #[test]
    fn rolling_builds_order_by_time_and_ignore_other_tags() {
        let releases: Vec<Release> = [
            "2025.11.29-0020-rolling",
            "2025.11.30-0019-rolling",
            "not-a-build",
            "2025.11.28-0021-rolling",
        ]
        .into_iter()
        .map(rel)
        .collect();
        let policy = Policy {
            order: VersionOrder::Time,
            // Minor policies say nothing about time-ordered tags.
            minor: MinorPolicy::Same,
            ..Policy::default()
        };
        let a = assess("2025.11.28-0021-rolling", &releases, &policy, NOW).unwrap();
        assert_eq!(allowed(&a), Some("2025.11.30-0019-rolling"));
        assert_eq!(a.ignored, ["not-a-build"]);
        let err = assess("v1.9.1", &releases, &policy, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the current version `v1.9.1` is not a time version (like 2025.01.06-0020-rolling)"
        );
    }

    #[test]
    fn a_release_without_the_asset_is_skipped_for_the_next_one() {
        let mut releases = vec![rel("v1.9.1"), rel("v1.9.2"), rel("v1.9.3")];
        releases[2].missing = Some("asset `metal-amd64.iso`".into());
        let a = assess("v1.9.1", &releases, &Policy::default(), NOW).unwrap();
        assert_eq!(allowed(&a), Some("v1.9.2"));
        assert_eq!(
            a.held[0].reasons[0].to_string(),
            "the release has no asset `metal-amd64.iso`"
        );
    }
}
