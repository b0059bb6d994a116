//! Which of a channel's releases an image accepts: the version order, how far a bump may move
//! (same minor, the next minor, anything newer), pre-releases, and a minimum release age.

use serde::Serialize;

use super::version::VersionOrder;

/// How far a bump may move a semantic version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MinorPolicy {
    /// Patches of the current minor only (`v1.9.1` → `v1.9.5`).
    Same,
    /// The current minor or the next one (`v1.9.1` → `v1.10.3`): Talos and Harvester upgrade
    /// only between adjacent minors, so each bump stays on a supported path.
    Next,
    /// Any newer version, majors included.
    Any,
}

impl MinorPolicy {
    pub const NAMES: [&'static str; 3] = ["same", "next", "any"];

    pub fn name(self) -> &'static str {
        match self {
            MinorPolicy::Same => "same",
            MinorPolicy::Next => "next",
            MinorPolicy::Any => "any",
        }
    }

    pub fn from_name(s: &str) -> Option<MinorPolicy> {
        match s {
            "same" => Some(MinorPolicy::Same),
            "next" => Some(MinorPolicy::Next),
            "any" => Some(MinorPolicy::Any),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub order: VersionOrder,
    pub minor: MinorPolicy,
    /// Accept pre-releases (semver pre-release versions, and releases the vendor flags so).
    pub prereleases: bool,
    /// Seconds a release must have been published before it is proposed.
    pub min_age: Option<u64>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            order: VersionOrder::Semver,
            minor: MinorPolicy::Same,
            prereleases: false,
            min_age: None,
        }
    }
}

/// `90m`, `12h`, `3d`, `2w` as seconds. A bare number is refused: the unit is the point.
pub fn parse_age(text: &str) -> Option<u64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let n: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let per = match unit {
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(per)
}

/// Seconds as the largest whole unit that fits (`3d`, `36h`, `90m`): for messages.
pub fn format_age(secs: u64) -> String {
    if secs >= 86_400 && secs % 86_400 == 0 || secs >= 7 * 86_400 {
        return format!("{}d", secs / 86_400);
    }
    if secs >= 3600 && secs % 3600 == 0 || secs >= 86_400 {
        return format!("{}h", secs / 3600);
    }
    format!("{}m", secs / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_have_units() {
        assert_eq!(parse_age("90m"), Some(5400));
        assert_eq!(parse_age("12h"), Some(43_200));
        assert_eq!(parse_age(" 3d "), Some(259_200));
        assert_eq!(parse_age("2w"), Some(1_209_600));
        for bad in [
            "",
            "3",
            "d",
            "3 days",
            "-1d",
            "1.5d",
            "99999999999999999999w",
            "3ä",
        ] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
        assert_eq!(format_age(259_200), "3d");
        assert_eq!(format_age(43_200), "12h");
        assert_eq!(format_age(5400), "90m");
        assert_eq!(format_age(8 * 86_400 + 5), "8d");
    }
}
