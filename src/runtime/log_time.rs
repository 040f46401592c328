//! Docker's log timestamps (`2026-11-29T09:35:32.123456789Z`, RFC 3339 in UTC with up to nine
//! fraction digits, trailing zeros dropped) as nanoseconds since the epoch, so that two of
//! them compare as times and not as strings.

/// Nanoseconds since the epoch, or `None` for anything that is not such a timestamp.
pub(super) fn parse(stamp: &str) -> Option<u128> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (
        clock.next()?.ok()?,
        clock.next()?.ok()?,
        clock.next()?.ok()?,
    );
    let valid = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&minute)
        && (0..61).contains(&second)
        && fraction.len() <= 9
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return None;
    }
    let nanos: u128 = format!("{fraction:0<9}").parse().ok()?;
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(u128::try_from(secs).ok()? * 1_000_000_000 + nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_compare_as_times() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse("2024-02-29T01:02:03.5Z"),
            Some((1_709_164_800 + 3_723) * 1_000_000_000 + 500_000_000)
        );
        // Trailing zeros are dropped: as strings, "…32.1234Z" sorts after "…32.12341Z".
        let (a, b) = (
            parse("2026-11-29T09:35:32.1234Z").unwrap(),
            parse("2026-11-29T09:35:32.12341Z").unwrap(),
        );
        assert!(a < b);
        for bad in [
            "",
            "2026-11-29 09:35:32Z",
            "2026-13-01T00:00:00Z",
            "x",
            "2026-11-29T09:35:32",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
