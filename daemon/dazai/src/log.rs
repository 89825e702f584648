//! The daemon's log: lines written with one `write(2)` each to a file
//! descriptor opened at start-up, so the panic can log after the seal.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where log lines go (a duplicate of stderr, close-on-exec).
pub struct Log {
    fd: OwnedFd,
}

impl Log {
    /// Logs to a close-on-exec duplicate of stderr, so a child never inherits it.
    pub fn to_stderr() -> std::io::Result<Self> {
        let fd = std::io::stderr().as_fd().try_clone_to_owned()?;
        Ok(Self { fd })
    }

    /// Writes one line: `dazai[PID] 2026-11-23T12:00:00.123Z message`.
    pub fn line(&self, message: fmt::Arguments<'_>) {
        let line = format!(
            "dazai[{}] {} {message}\n",
            std::process::id(),
            utc_timestamp(SystemTime::now())
        );
        // A log that cannot be written must not stop the panic that follows.
        let _ = nix::unistd::write(&self.fd, line.as_bytes());
    }
}

/// RFC 3339 UTC with milliseconds, computed by hand so the daemon needs no
/// time-zone files (it cannot open files once sealed).
pub fn utc_timestamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        since_epoch.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_436_400_123);
        assert_eq!(utc_timestamp(t), "2026-11-23T12:20:00.123Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
