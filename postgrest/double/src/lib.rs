//! The PostgREST test double as a library: the binary (`src/main.rs`) and the integration tests
//! (`tests/`) share it. See README.md.

pub mod app;
pub mod config;
pub mod dburi;
pub mod http;
pub mod jwt;
pub mod pg;

use std::time::{SystemTime, UNIX_EPOCH};

/// The PostgREST version whose behaviour the double copies (and the production image ships).
pub const VERSION: &str = "11.2.2";

/// Prints PostgREST-style log lines to stderr, as PostgREST does for its worker and startup
/// logs: `28/Nov/2025:03:14:00 +0000: message`.
pub fn log(message: &str) {
    eprintln!("{}: {message}", timestamp(SystemTime::now()));
}

fn timestamp(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm, to avoid a date crate for one log prefix.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_timestamps() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_164_800 + 3_723);
        assert_eq!(timestamp(t), "29/Feb/2024:01:02:03 +0000");
        assert_eq!(timestamp(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    }
}
