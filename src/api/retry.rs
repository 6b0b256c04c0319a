//! Retry timing: exponential backoff with full jitter, and Retry-After parsing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use dynamics_core::wire::MAX_REMOTE_WAIT;

/// Delay before retry number `attempt` (0-based). A Retry-After from the
/// remote wins over the computed backoff; both are capped at `max`.
pub(crate) fn backoff_delay(
    attempt: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
) -> Duration {
    match retry_after {
        Some(ra) => ra.min(max).min(MAX_REMOTE_WAIT),
        None => crate::backoff::jitter(crate::backoff::exponential(initial, max, attempt)).min(max),
    }
}

/// Parses a Retry-After value: delta-seconds or an IMF-fixdate HTTP date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`). A date in the past gives zero; any
/// wait is capped at [`MAX_REMOTE_WAIT`]. Negative, non-finite and
/// unreadable values give `None` (no Retry-After). Never panics.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Any number of digits: too many for a u64 is still "very long".
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_REMOTE_WAIT));
    }
    if let Ok(f) = v.parse::<f64>() {
        // Fractions are not standard, but harmless to accept. "-1e-400" is -0.0: negative.
        let cap = MAX_REMOTE_WAIT.as_secs_f64();
        if f.is_finite() && f >= 0.0 && !v.starts_with('-') {
            return Some(Duration::from_secs_f64(f.min(cap)));
        }
        return None;
    }
    let at = parse_http_date(v)?;
    let wait = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_REMOTE_WAIT))
}

fn parse_http_date(s: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_dow, day, mon, year, hms, gmt] = parts.as_slice() else {
        return None;
    };
    if !gmt.eq_ignore_ascii_case("GMT") {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(mon))? as u32 + 1;
    let day: u32 = day.parse().ok()?;
    // IMF-fixdate has a four-digit year; bounding it keeps the arithmetic
    // below far from overflow.
    let year: i64 = year.parse().ok().filter(|y| (1..=9999).contains(y))?;
    let mut t = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if t.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let Ok(days) = u64::try_from(days_from_civil(year, month, day)) else {
        // Before 1970: in the past whenever "now" is.
        return Some(UNIX_EPOCH);
    };
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + m * 60 + sec)?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// well-known civil-date algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("inf", now), None);
        assert_eq!(parse_retry_after("-0.5", now), None);
        assert_eq!(parse_retry_after("-1e-400", now), None);
        assert_eq!(
            parse_retry_after("Mon, 01 Jan 0001 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn remote_waits_are_capped_at_an_hour() {
        let now = SystemTime::now();
        for v in [
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "3601",
            "1e300",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after(v, now), Some(MAX_REMOTE_WAIT), "{v}");
        }
        assert_eq!(
            parse_retry_after("3599", now),
            Some(Duration::from_secs(3599))
        );
        // Years an IMF-fixdate cannot have are unreadable, not huge.
        for v in [
            "Fri, 31 Dec 99999 23:59:59 GMT",
            "Fri, 31 Dec 9223372036854775807 23:59:59 GMT",
            "Fri, 31 Dec -9223372036854775808 23:59:59 GMT",
            "Fri, 31 Dec 0 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after(v, now), None, "{v}");
        }
        let huge = Some(Duration::from_secs(u64::MAX));
        let d = backoff_delay(0, Duration::from_millis(1), Duration::MAX, huge);
        assert_eq!(d, MAX_REMOTE_WAIT);
    }

    #[test]
    fn retry_after_http_date() {
        // 784111777 is the Unix time of the RFC 9110 example date.
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 30);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(30))
        );
        let later = UNIX_EPOCH + Duration::from_secs(784_111_777 + 30);
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", later),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 CET", now),
            None
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Foo 1994 08:49:37 GMT", now),
            None
        );
    }

    #[test]
    fn civil_days_known_points() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    }

    #[test]
    fn backoff_is_capped_and_retry_after_wins() {
        let i = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in 0..40 {
            let d = backoff_delay(attempt, i, max, None);
            let doubled = i.saturating_mul(2u32.saturating_pow(attempt.min(20)));
            assert!(d <= max);
            assert!(d >= doubled.min(max) && d <= doubled.mul_f64(1.1), "{d:?}");
        }
        assert_eq!(
            backoff_delay(0, i, max, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(backoff_delay(0, i, max, Some(Duration::from_secs(60))), max);
    }
}
