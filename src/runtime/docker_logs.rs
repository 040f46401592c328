//! Following a container's log on Docker: where it ends now and what it writes after that.
//! Docker's timestamps (`2026-11-29T09:35:32.123456789Z`, RFC 3339 with up to nine fraction
//! digits, trailing zeros dropped) are read as nanoseconds since the epoch, so that two of
//! them compare as times and not as strings.
//!
//! Docker stamps each line with its own clock when it reads the line from the container. A
//! daemon on a Unix socket whose clock reads between our clock's readings just before and
//! just after asking it ([`shares_clock`]) is on our kernel's clock: then "now" on our clock is
//! a cursor as good as the last line's stamp (every line written after a signal we send later
//! is stamped later), and it costs no call on a reload's path to its signal. Any other daemon
//! is asked for its last line's stamp ([`cursor`]).

use std::time::SystemTime;

use bollard::query_parameters::LogsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use super::docker::map_error;
use super::{LineStream, LogCursor, RuntimeError};

/// Whether the daemon's clock is ours: its `SystemTime` falls between our readings before and
/// after asking. False when it cannot be asked.
pub(super) async fn shares_clock(docker: &Docker) -> bool {
    let before = now();
    let Ok(info) = docker.info().await else {
        return false;
    };
    let after = now();
    info.system_time
        .as_deref()
        .and_then(parse)
        .is_some_and(|daemon| (before..=after).contains(&daemon))
}

/// Our clock, as a cursor: nanoseconds since the epoch.
pub(super) fn now() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// The timestamp of the container's last log line (the start of time for an empty log).
pub(super) async fn cursor(docker: &Docker, id: &str) -> Result<LogCursor, RuntimeError> {
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .tail("1")
        .build();
    let mut stream = docker.logs(id, Some(options));
    let mut last = LogCursor::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(map_error)?.to_string();
        for line in chunk.lines() {
            if let Some(at) = line.split_once(' ').and_then(|(t, _)| parse(t)) {
                last = last.max(LogCursor(at));
            }
        }
    }
    Ok(last)
}

/// The lines written after `cursor`, following the log, without their timestamps.
pub(super) fn after(docker: &Docker, id: &str, cursor: LogCursor) -> LineStream {
    // `since` is whole seconds: lines of the cursor's own second come too, and are dropped by
    // their timestamp.
    let since = i32::try_from(cursor.0 / 1_000_000_000).unwrap_or(i32::MAX);
    let options = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .timestamps(true)
        .follow(true)
        .since(since)
        .build();
    let lines = docker.logs(id, Some(options)).flat_map(move |chunk| {
        let lines: Vec<Result<String, RuntimeError>> = match chunk {
            Err(e) => vec![Err(map_error(e))],
            Ok(chunk) => chunk
                .to_string()
                .lines()
                .filter_map(|line| {
                    let (stamp, text) = line.split_once(' ')?;
                    (parse(stamp)? > cursor.0).then(|| Ok(text.to_owned()))
                })
                .collect(),
        };
        futures_util::stream::iter(lines)
    });
    Box::pin(lines)
}

/// Nanoseconds since the epoch, or `None` for anything that is not such a timestamp.
/// Log lines are stamped in UTC (`Z`); the daemon's `SystemTime` is in its local time zone
/// (`+01:00`).
fn parse(stamp: &str) -> Option<u128> {
    let (stamp, offset) = match stamp.strip_suffix('Z') {
        Some(utc) => (utc, 0),
        None => {
            let (stamp, zone) = stamp.split_at_checked(stamp.len().checked_sub(6)?)?;
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (hours, minutes) = zone[1..].split_once(':')?;
            let (hours, minutes) = (hours.parse::<i64>().ok()?, minutes.parse::<i64>().ok()?);
            (stamp, sign * (hours * 3600 + minutes * 60))
        }
    };
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
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
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
        // The daemon's own time is in its time zone.
        assert_eq!(
            parse("2026-11-29T10:35:32.5+01:00"),
            parse("2026-11-29T09:35:32.5Z")
        );
        assert_eq!(
            parse("2026-11-29T04:05:32-05:30"),
            parse("2026-11-29T09:35:32Z")
        );
        for bad in [
            "",
            "2026-11-29 09:35:32Z",
            "2026-13-01T00:00:00Z",
            "x",
            "2026-11-29T09:35:32",
            "2026-11-29T09:35:32*01:00",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
