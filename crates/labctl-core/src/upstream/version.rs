//! Versions as vendors tag them, and the order that fits each channel: semantic versions
//! (Talos, Harvester) or time-ordered tags (VyOS rolling builds).

use std::cmp::Ordering;
use std::fmt;

use serde::Serialize;

/// How a channel's versions are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VersionOrder {
    /// `v1.9.1`, `1.10.0-beta.1`: semver.org precedence.
    Semver,
    /// `2025.01.06-0020-rolling` (and the older `1.5-rolling-202501060020`): by the build time
    /// the tag carries.
    Time,
}

impl VersionOrder {
    pub const NAMES: [&'static str; 2] = ["semver", "time"];

    pub fn name(self) -> &'static str {
        match self {
            VersionOrder::Semver => "semver",
            VersionOrder::Time => "time",
        }
    }

    pub fn from_name(s: &str) -> Option<VersionOrder> {
        match s {
            "semver" => Some(VersionOrder::Semver),
            "time" => Some(VersionOrder::Time),
            _ => None,
        }
    }

    /// `text` as a version in this order; `None` when it is not one.
    pub fn parse(self, text: &str) -> Option<Version> {
        match self {
            VersionOrder::Semver => Semver::parse(text).map(Version::Semver),
            VersionOrder::Time => parse_time_tag(text).map(Version::Time),
        }
    }

    /// What a version in this order looks like, for messages.
    pub fn example(self) -> &'static str {
        match self {
            VersionOrder::Semver => "v1.9.1",
            VersionOrder::Time => "2025.01.06-0020-rolling",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Semver(Semver),
    /// `YYYYMMDDHHMM` as a number: ordering the numbers orders the builds.
    Time(u64),
}

impl Version {
    pub fn is_prerelease(&self) -> bool {
        match self {
            Version::Semver(s) => !s.pre.is_empty(),
            Version::Time(_) => false,
        }
    }

    pub fn semver(&self) -> Option<&Semver> {
        match self {
            Version::Semver(s) => Some(s),
            Version::Time(_) => None,
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        match (self, other) {
            (Version::Semver(a), Version::Semver(b)) => Some(a.cmp(b)),
            (Version::Time(a), Version::Time(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Semver {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
    /// Dot-separated pre-release identifiers (`beta.1` → `["beta", "1"]`).
    pub pre: Vec<String>,
}

impl Semver {
    /// `v1.9.1`, `1.9.1`, `v1.10.0-beta.1`, `v1.9.1+build` (build metadata ignored for order).
    pub fn parse(text: &str) -> Option<Semver> {
        let text = text.strip_prefix(['v', 'V']).unwrap_or(text);
        let text = text.split_once('+').map_or(text, |(v, _)| v);
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let mut numbers = core.split('.').map(number);
        let (major, minor, patch) = (numbers.next()??, numbers.next()??, numbers.next()??);
        if numbers.next().is_some() {
            return None;
        }
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => {
                let ids: Vec<String> = pre.split('.').map(str::to_string).collect();
                if ids.iter().any(|id| {
                    id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }) {
                    return None;
                }
                ids
            }
        };
        Some(Semver {
            major,
            minor,
            patch,
            pre,
        })
    }
}

/// A numeric semver field: digits, no leading zero (so `01` is not a version number).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

impl Ord for Semver {
    fn cmp(&self, other: &Semver) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                // A release outranks its own pre-releases.
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => compare_pre(&self.pre, &other.pre),
            })
    }
}

impl PartialOrd for Semver {
    fn partial_cmp(&self, other: &Semver) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// semver.org §11: numeric identifiers compare as numbers and rank below alphanumeric ones;
/// a longer list wins when all shared identifiers are equal.
fn compare_pre(a: &[String], b: &[String]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            (Ok(_), Err(_)) => Ordering::Less,
            (Err(_), Ok(_)) => Ordering::Greater,
            (Err(_), Err(_)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

impl fmt::Display for Semver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if !self.pre.is_empty() {
            write!(f, "-{}", self.pre.join("."))?;
        }
        Ok(())
    }
}

/// `2025.01.06-0020-rolling` → 202501060020; the older `1.5-rolling-202501060020` too.
fn parse_time_tag(text: &str) -> Option<u64> {
    let stamp = if let Some(rest) = text.strip_suffix("-rolling") {
        let (date, time) = rest.split_once('-')?;
        let mut parts = date.split('.');
        let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 || time.len() != 4
        {
            return None;
        }
        format!("{y}{m}{d}{time}")
    } else {
        let (_, stamp) = text.rsplit_once("-rolling-")?;
        stamp.to_string()
    };
    if stamp.len() != 12 || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| stamp[at..at + 2].parse::<u64>().ok();
    let (month, day, hour, minute) = (field(4)?, field(6)?, field(8)?, field(10)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    stamp.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn semver(s: &str) -> Semver {
        Semver::parse(s).unwrap_or_else(|| panic!("{s} parses"))
    }

    #[test]
    fn semver_precedence_as_semver_org_lists_it() {
        let ordered = [
            "v1.0.0-alpha",
            "v1.0.0-alpha.1",
            "v1.0.0-alpha.beta",
            "v1.0.0-beta",
            "v1.0.0-beta.2",
            "v1.0.0-beta.11",
            "v1.0.0-rc.1",
            "v1.0.0",
            "1.0.1",
            "v1.9.1",
            "v1.10.0-alpha.0",
            "v1.10.0",
            "v2.0.0",
        ];
        for pair in ordered.windows(2) {
            assert!(
                semver(pair[0]) < semver(pair[1]),
                "{} < {}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(semver("v1.9.1+build.5"), semver("1.9.1"));
        assert_eq!(semver("v1.10.0-beta.1").to_string(), "1.10.0-beta.1");
    }

    #[test]
    fn what_is_not_a_semantic_version() {
        for bad in [
            "",
            "v1",
            "v1.4",
            "master",
            "v1.4.0.1",
            "v01.4.0",
            "v1.4.0-",
            "v1.4.0-a..b",
            "v1.x.0",
            "v1.4.0-ü",
        ] {
            assert_eq!(Semver::parse(bad), None, "{bad}");
        }
        assert!(semver("v1.10.0-beta.1").pre == ["beta", "1"]);
    }

    #[test]
    fn rolling_tags_order_by_their_build_time() {
        let order = VersionOrder::Time;
        let a = order.parse("1.5-rolling-202501060020").unwrap();
        let b = order.parse("2025.01.06-0021-rolling").unwrap();
        let c = order.parse("2025.11.30-0019-rolling").unwrap();
        assert!(a < b && b < c);
        assert_eq!(
            order.parse("2025.01.06-0020-rolling"),
            Some(Version::Time(202501060020))
        );
        assert_eq!(a, Version::Time(202501060020));
        for bad in [
            "2025.13.06-0020-rolling",
            "2025.01.06-2460-rolling",
            "2025.1.6-0020-rolling",
            "2025.01.06-0020",
            "v1.9.1",
            "1.5-rolling-2025",
        ] {
            assert_eq!(order.parse(bad), None, "{bad}");
        }
        assert!(!c.is_prerelease());
        // Versions of different orders never compare.
        assert_eq!(
            c.partial_cmp(&VersionOrder::Semver.parse("v1.0.0").unwrap()),
            None
        );
    }
}
