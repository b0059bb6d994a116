//! `labctl outdated`'s report: one row per tracked image, as data (the JSON format) and as
//! text.

use std::fmt;

use serde::Serialize;

use super::assess::{Assessment, Candidate, Held, Hold};
use super::policy::format_age;
use super::track::ChannelKind;

/// Version of the `labctl outdated --json` report. Additive changes bump the minor version.
pub const FORMAT_VERSION: &str = "1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    UpToDate,
    UpdateAvailable,
    LookupFailed,
    /// Not tracked; listed for a warning.
    Untracked,
}

/// Where the bytes of a pin the vendor no longer lists can still be found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kept", rename_all = "kebab-case")]
pub enum Kept {
    /// The bucket's `images/` holds them (the record's checksum is the pin's).
    Published,
    /// `history/` holds them: a revert to this pin is a server-side copy.
    History,
    /// Neither: once replaced, this version cannot be published again.
    Nowhere,
    /// The store could not be read to tell.
    Unknown { why: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "warning", rename_all = "kebab-case")]
pub enum Warning {
    /// The channel no longer lists the current version (VyOS deletes old rolling builds).
    CurrentNotListed { bucket: Kept },
    /// The vendor marked the current version broken.
    CurrentBroken,
    /// The URL is rebuilt in place (a Harvester branch folder): today's checksum will not last.
    MutableUrl { folder: String },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::CurrentNotListed { bucket } => {
                write!(f, "the current version is no longer listed upstream; ")?;
                match bucket {
                    Kept::Published => write!(f, "the bucket still holds its bytes in images/ (keep `history:` so a replace does not lose them)"),
                    Kept::History => write!(f, "the bucket keeps its bytes in history/, so a revert still applies"),
                    Kept::Nowhere => write!(f, "the bucket does not hold its bytes: apply cannot publish it again"),
                    Kept::Unknown { why } => write!(f, "whether the bucket holds its bytes is unknown ({why})"),
                }
            }
            Warning::CurrentBroken => write!(f, "the vendor marked the current version broken"),
            Warning::MutableUrl { folder } => write!(
                f,
                "the URL is in Harvester's branch folder `{folder}/`, which is rebuilt in place: pin a release folder"
            ),
        }
    }
}

/// A version as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shown {
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
}

impl Shown {
    pub fn of(c: &Candidate, now: u64) -> Shown {
        Shown {
            version: c.version.clone(),
            published_at: c.published_at.map(crate::timefmt::rfc3339),
            age_seconds: c.published_at.map(|at| now.saturating_sub(at)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownHold {
    #[serde(flatten)]
    pub hold: Hold,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownHeld {
    pub version: String,
    pub reasons: Vec<ShownHold>,
}

impl From<&Held> for ShownHeld {
    fn from(h: &Held) -> ShownHeld {
        ShownHeld {
            version: h.version.clone(),
            reasons: h
                .reasons
                .iter()
                .map(|r| ShownHold {
                    hold: r.clone(),
                    message: r.to_string(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownWarning {
    #[serde(flatten)]
    pub warning: Warning,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelKind>,
    /// What was asked (the factory, or the repository).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    pub status: Status,
    pub newest_allowed: Option<Shown>,
    pub newest: Option<Shown>,
    pub held_back: Vec<ShownHeld>,
    pub warnings: Vec<ShownWarning>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Row {
    pub fn assessed(
        name: &str,
        channel: ChannelKind,
        lookup: String,
        group: Option<String>,
        a: &Assessment,
        warnings: Vec<Warning>,
        now: u64,
    ) -> Row {
        Row {
            name: name.to_string(),
            channel: Some(channel),
            lookup: Some(lookup),
            current: Some(a.current.clone()),
            status: if a.update_available() {
                Status::UpdateAvailable
            } else {
                Status::UpToDate
            },
            newest_allowed: a.newest_allowed.as_ref().map(|c| Shown::of(c, now)),
            newest: a.newest.as_ref().map(|c| Shown::of(c, now)),
            held_back: a.held.iter().map(ShownHeld::from).collect(),
            warnings: warnings.into_iter().map(shown).collect(),
            group,
            error: None,
        }
    }

    pub fn failed(
        name: &str,
        channel: ChannelKind,
        lookup: String,
        current: Option<String>,
        group: Option<String>,
        error: String,
    ) -> Row {
        Row {
            name: name.to_string(),
            channel: Some(channel),
            lookup: Some(lookup),
            current,
            status: Status::LookupFailed,
            newest_allowed: None,
            newest: None,
            held_back: Vec::new(),
            warnings: Vec::new(),
            group,
            error: Some(error),
        }
    }

    pub fn untracked(name: &str, warnings: Vec<Warning>) -> Row {
        Row {
            name: name.to_string(),
            channel: None,
            lookup: None,
            current: None,
            status: Status::Untracked,
            newest_allowed: None,
            newest: None,
            held_back: Vec::new(),
            warnings: warnings.into_iter().map(shown).collect(),
            group: None,
            error: None,
        }
    }
}

fn shown(w: Warning) -> ShownWarning {
    ShownWarning {
        message: w.to_string(),
        warning: w,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub up_to_date: usize,
    pub update_available: usize,
    pub lookup_failed: usize,
    pub warnings: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub format_version: &'static str,
    pub labctl_version: String,
    pub summary: Summary,
    pub images: Vec<Row>,
}

impl Report {
    pub fn new(labctl_version: &str, images: Vec<Row>) -> Report {
        let mut summary = Summary::default();
        for row in &images {
            match row.status {
                Status::UpToDate => summary.up_to_date += 1,
                Status::UpdateAvailable => summary.update_available += 1,
                Status::LookupFailed => summary.lookup_failed += 1,
                Status::Untracked => {}
            }
            summary.warnings += row.warnings.len();
        }
        Report {
            format_version: FORMAT_VERSION,
            labctl_version: labctl_version.to_string(),
            summary,
            images,
        }
    }

    /// 1 when a lookup failed, else 2 when an update is available, else 0: as `plan
    /// --detailed-exitcode` and `drift`.
    pub fn exit_code(&self) -> u8 {
        if self.summary.lookup_failed > 0 {
            1
        } else if self.summary.update_available > 0 {
            2
        } else {
            0
        }
    }

    /// The report as a table with the reasons and warnings under each row. Long on purpose:
    /// the columns, then each row's lines, then the totals, as the terminal shows them.
    pub fn human(&self) -> String {
        let mut rows = vec![[
            "IMAGE".to_string(),
            "CURRENT".into(),
            "ALLOWED".into(),
            "NEWEST".into(),
            "AGE".into(),
            "CHANNEL".into(),
        ]];
        let dash = || "-".to_string();
        for row in &self.images {
            let allowed = match (&row.status, &row.newest_allowed) {
                (Status::LookupFailed, _) => "?".to_string(),
                (Status::Untracked, _) => dash(),
                (_, Some(s)) => s.version.clone(),
                (_, None) => "(current)".to_string(),
            };
            let age = row
                .newest_allowed
                .as_ref()
                .and_then(|s| s.age_seconds)
                .map(format_age)
                .unwrap_or_else(dash);
            rows.push([
                row.name.clone(),
                row.current.clone().unwrap_or_else(dash),
                allowed,
                row.newest
                    .as_ref()
                    .map(|s| s.version.clone())
                    .unwrap_or_else(dash),
                age,
                row.channel
                    .map(|c| c.name().to_string())
                    .unwrap_or_else(|| "untracked".into()),
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, cells) in rows.iter().enumerate() {
            let line: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
            let Some(row) = i.checked_sub(1).map(|i| &self.images[i]) else {
                continue;
            };
            if let Some(e) = &row.error {
                out.push_str(&format!("  lookup failed: {e}\n"));
            }
            for held in &row.held_back {
                let why: Vec<&str> = held.reasons.iter().map(|r| r.message.as_str()).collect();
                out.push_str(&format!(
                    "  held back {}: {}\n",
                    held.version,
                    why.join("; ")
                ));
            }
            for w in &row.warnings {
                out.push_str(&format!("  warning: {}\n", w.message));
            }
        }
        let s = &self.summary;
        out.push_str(&format!(
            "\n{} up to date, {} with an update, {} lookup{} failed, {} warning{}.\n",
            s.up_to_date,
            s.update_available,
            s.lookup_failed,
            if s.lookup_failed == 1 { "" } else { "s" },
            s.warnings,
            if s.warnings == 1 { "" } else { "s" },
        ));
        if s.update_available > 0 {
            out.push_str("Run `labctl bump` to download, verify and propose them.\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{assess, Policy, Release};

    #[test]
    fn rows_say_what_is_allowed_what_is_held_and_why() {
        let now = 1_800_000_000;
        let releases: Vec<Release> = ["v1.9.1", "v1.9.4", "v1.10.0"]
            .iter()
            .map(|t| Release {
                tag: t.to_string(),
                published_at: Some(now - 2 * 86_400),
                prerelease: false,
                broken: false,
                missing: None,
            })
            .collect();
        let a = assess("v1.9.1", &releases, &Policy::default(), now).unwrap();
        let row = Row::assessed(
            "talos",
            ChannelKind::Talos,
            "the Talos factory at https://f".into(),
            None,
            &a,
            vec![Warning::CurrentNotListed {
                bucket: Kept::History,
            }],
            now,
        );
        let failed = Row::failed(
            "vyos",
            ChannelKind::Github,
            "the GitHub releases of vyos/vyos-nightly-build".into(),
            Some("2025.11.30-0019-rolling".into()),
            None,
            "timed out".into(),
        );
        let report = Report::new("0.1.0", vec![row, failed]);
        assert_eq!(report.exit_code(), 1);
        let text = report.human();
        assert!(text.starts_with("IMAGE  CURRENT"), "{text}");
        assert!(text.contains("\ntalos  v1.9.1  "), "{text}");
        assert!(text.contains("v1.9.4"), "{text}");
        assert!(
            text.contains("held back v1.10.0: another minor (`minor: same`)"),
            "{text}"
        );
        assert!(text.contains("keeps its bytes in history/"), "{text}");
        assert!(text.contains("lookup failed: timed out"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["format_version"], "1.0");
        assert_eq!(json["images"][0]["status"], "update-available");
        assert_eq!(json["images"][0]["newest_allowed"]["version"], "v1.9.4");
        assert_eq!(json["images"][0]["newest_allowed"]["age_seconds"], 172_800);
        assert_eq!(
            json["images"][0]["held_back"][0]["reasons"][0]["reason"],
            "policy"
        );
        assert_eq!(
            json["images"][0]["held_back"][0]["reasons"][0]["minor"],
            "same"
        );
        assert_eq!(
            json["images"][0]["warnings"][0]["warning"],
            "current-not-listed"
        );
        assert_eq!(
            json["images"][0]["warnings"][0]["bucket"]["kept"],
            "history"
        );
        assert_eq!(json["images"][1]["status"], "lookup-failed");
        assert_eq!(json["summary"]["lookup_failed"], 1);
        let fine = Report::new("0.1.0", vec![]);
        assert_eq!(fine.exit_code(), 0);
    }
}
