//! RFC 3339 timestamps in UTC and HTTP dates, without a date-time dependency.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_rfc3339() -> String {
    rfc3339(unix_now().as_secs())
}

/// Time since the epoch (zero if the clock is before it).
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// An HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 9110's IMF-fixdate) as time since the
/// epoch. The obsolete formats are not accepted: servers have sent IMF-fixdate for decades.
pub fn parse_http_date(text: &str) -> Option<Duration> {
    let mut fields = text.split_whitespace();
    let (_weekday, day, month, year, time, zone) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if zone != "GMT" || fields.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let day: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: i64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let mut hms = time.split(':').map(|f| f.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(Duration::from_secs(
        days_from_civil(year, month, day)? * 86_400 + h * 3600 + m * 60 + s,
    ))
}

/// Days since the epoch of a civil date (Howard Hinnant), the inverse of `rfc3339` below;
/// `None` before 1970.
fn days_from_civil(year: i64, month: i64, day: i64) -> Option<u64> {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// An RFC 3339 timestamp as GitHub and most APIs write it (`2025-01-06T00:39:12Z`, fractional
/// seconds and numeric offsets accepted) as seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let text = text.trim();
    let (date, rest) = text.split_once(['T', 't', ' '])?;
    let mut ymd = date.split('-');
    let year: i64 = ymd
        .next()?
        .parse()
        .ok()
        .filter(|y| (1970..=9999).contains(y))?;
    let month: i64 = ymd.next()?.parse().ok().filter(|m| (1..=12).contains(m))?;
    let day: i64 = ymd.next()?.parse().ok().filter(|d| (1..=31).contains(d))?;
    if ymd.next().is_some() || rest.len() < 8 || !rest.is_char_boundary(8) {
        return None;
    }
    let (time, zone) = rest.split_at(8);
    let mut hms = time.split(':').map(|f| f.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let zone = match zone.strip_prefix('.') {
        Some(frac) => frac.trim_start_matches(|c: char| c.is_ascii_digit()),
        None => zone,
    };
    let offset: i64 = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let (oh, om) = zone.get(1..)?.split_once(':')?;
            let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let local = days_from_civil(year, month, day)? * 86_400 + h * 3600 + m * 60 + s;
    u64::try_from(local as i64 - offset).ok()
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (Howard Hinnant's civil-from-days).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_timestamp_cut_inside_a_character_is_refused_not_a_panic() {
        // From a lock file anyone with write access to the bucket can write.
        assert_eq!(super::parse_rfc3339("2025-01-01T€€€"), None);
        assert_eq!(super::parse_rfc3339("2025-01-01T0€:00:00Z"), None);
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_683_600), "2026-11-26T09:00:00Z");
    }

    #[test]
    fn parses_rfc3339_as_apis_write_it() {
        for secs in [0, 951_782_400, 1_795_683_600, 1_736_123_952] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339(secs)), Some(secs));
        }
        assert_eq!(
            super::parse_rfc3339("2026-11-26T10:00:00.123+01:00"),
            Some(1_795_683_600)
        );
        assert_eq!(
            super::parse_rfc3339("2026-11-26T09:00:00z"),
            Some(1_795_683_600)
        );
        for bad in [
            "",
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-11-26T09:00:00",
            "1969-12-31T23:59:59Z",
            "2026-11-26T09:00:00+5",
        ] {
            assert_eq!(super::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_http_dates() {
        let at = |s| super::parse_http_date(s).map(|d| d.as_secs());
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(at("Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        assert_eq!(at("Thu, 26 Nov 2026 09:00:00 GMT"), Some(1_795_683_600));
        for bad in [
            "",
            "Thu, 26 Nov 2026 09:00:00 UTC",
            "Thu, 26 Foo 2026 09:00:00 GMT",
            "Thu, 26 Nov 2026 25:00:00 GMT",
            "Thu, 26 Nov 2026 09:00 GMT",
            "Thu, 99999999999999999999 Nov 2026 09:00:00 GMT",
            "Thu, 26 Nov 2026 09:00:00 GMT extra",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
