//! The daemon's log: lines written with one call each to a descriptor opened
//! at start-up, so the panic can log after the seal.
//!
//! A line goes out now or not at all. The log runs inside the single-threaded
//! event loop, and stderr may be a pipe nobody reads (a paused pager) that any
//! process of the user can fill by sending requests the daemon refuses: a
//! write that waited for room would hold the loop, and with it the panic. A
//! line that does not fit is dropped and counted, and the next line that
//! fits says how many were lost.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};
use nix::sys::stat::{fstat, Mode, SFlag};

/// [`Log::limited`] lets this many lines of one kind through per window…
const LIMITED_LINES: u32 = 5;
/// …of this length; it counts the rest.
const LIMITED_WINDOW: Duration = Duration::from_secs(1);

/// How a line reaches the descriptor without waiting for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    /// An open file description of the log's own, opened O_NONBLOCK: a plain
    /// `write(2)` fails with EAGAIN instead of waiting.
    Own,
    /// A socket (systemd's journal stream, for one), which cannot be reopened
    /// through /proc: `send(2)` with MSG_DONTWAIT is non-blocking per call.
    Socket,
    /// The description shared with stderr's other holders, where O_NONBLOCK
    /// is not the log's to set: a regular file (it never waits for a reader),
    /// or what could not be reopened. A zero-timeout poll for room comes
    /// first; another writer could fill a pipe between the two calls, a race
    /// left open only where the reopen failed.
    Shared,
}

/// One kind of line [`Log::limited`] thins out.
struct Window {
    kind: &'static str,
    started: Instant,
    passed: u32,
    suppressed: u64,
}

impl Window {
    /// Whether a line at `now` goes through, and if so how many of its kind
    /// were suppressed since the last one that did.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.started) >= LIMITED_WINDOW {
            self.started = now;
            self.passed = 0;
        }
        if self.passed >= LIMITED_LINES {
            self.suppressed += 1;
            return None;
        }
        self.passed += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Where log lines go (stderr, through a close-on-exec descriptor of the log's own).
pub struct Log {
    fd: OwnedFd,
    sink: Sink,
    /// Lines lost since the last one written.
    dropped: Cell<u64>,
    /// The last write went out in part: the next one ends that line first.
    torn: Cell<bool>,
    windows: RefCell<Vec<Window>>,
    /// Only [`Log::always`] lines are written (`--quiet`).
    quiet: bool,
}

impl Log {
    /// Logs to stderr through a close-on-exec descriptor, so a child never
    /// inherits it; `quiet` keeps all but [`Log::always`] lines back.
    pub fn to_stderr(quiet: bool) -> io::Result<Self> {
        let mut log = Self::to(io::stderr().as_fd())?;
        log.quiet = quiet;
        Ok(log)
    }

    /// Logs to what `fd` refers to.
    fn to(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let (fd, sink) = open_sink(fd)?;
        Ok(Self {
            fd,
            sink,
            dropped: Cell::new(0),
            torn: Cell::new(false),
            windows: RefCell::new(Vec::new()),
            quiet: false,
        })
    }

    /// The descriptor a signal handler may write one last line to without
    /// waiting (`send(2)` with MSG_DONTWAIT for a socket, `write(2)`
    /// otherwise); `None` where only a poll first would make that safe.
    pub fn nonblocking_fd(&self) -> Option<RawFd> {
        let regular_file = || {
            nix::sys::stat::fstat(self.fd.as_fd()).is_ok_and(|stat| {
                nix::sys::stat::SFlag::from_bits_truncate(stat.st_mode)
                    .contains(nix::sys::stat::SFlag::S_IFREG)
            })
        };
        match self.sink {
            Sink::Own | Sink::Socket => Some(self.fd.as_raw_fd()),
            // A regular file never waits for a reader.
            Sink::Shared if regular_file() => Some(self.fd.as_raw_fd()),
            Sink::Shared => None,
        }
    }

    /// Writes one line, `dazai[PID] 2026-11-23T12:00:00.123Z message`, if it
    /// fits now; drops and counts it otherwise.
    pub fn line(&self, message: fmt::Arguments<'_>) {
        if !self.quiet {
            self.always(message);
        }
    }

    /// [`Log::line`], even under `--quiet`: the PANIC line.
    pub fn always(&self, message: fmt::Arguments<'_>) {
        let dropped = self.dropped.get();
        let mut text = String::new();
        if self.torn.get() {
            text.push('\n');
        }
        if dropped > 0 {
            stamp(
                &mut text,
                format_args!("log: {dropped} lines dropped (stderr was full)"),
            );
        }
        let notice = text.len();
        stamp(&mut text, message);
        let written = self.sink.write(self.fd.as_fd(), text.as_bytes());
        let (dropped, torn) = match written {
            Some(n) if n == text.len() => (0, false),
            None | Some(0) => (dropped + 1, self.torn.get()),
            Some(n) if n >= notice => (1, true),
            Some(_) => (dropped + 1, true),
        };
        self.dropped.set(dropped);
        self.torn.set(torn);
    }

    /// Writes a line of `kind` as [`Log::line`] does, but at most a few per
    /// second of each kind: for lines anyone can cause at will, such as
    /// refusals. The next line let through says how many were suppressed.
    pub fn limited(&self, kind: &'static str, message: fmt::Arguments<'_>) {
        self.limited_at(Instant::now(), kind, message);
    }

    fn limited_at(&self, now: Instant, kind: &'static str, message: fmt::Arguments<'_>) {
        let admitted = {
            let mut windows = self.windows.borrow_mut();
            let index = match windows.iter().position(|w| w.kind == kind) {
                Some(index) => index,
                None => {
                    windows.push(Window {
                        kind,
                        started: now,
                        passed: 0,
                        suppressed: 0,
                    });
                    windows.len() - 1
                }
            };
            windows[index].admit(now)
        };
        match admitted {
            None => {}
            Some(0) => self.line(message),
            Some(n) => self.line(format_args!("{message} ({n} similar lines suppressed)")),
        }
    }
}

/// Appends `dazai[PID] TIMESTAMP message` and a newline to `text`.
fn stamp(text: &mut String, message: fmt::Arguments<'_>) {
    let _ = writeln!(
        text,
        "dazai[{}] {} {message}",
        std::process::id(),
        utc_timestamp(SystemTime::now())
    );
}

/// A descriptor for the log and how to write to it without waiting.
///
/// O_NONBLOCK belongs to the open file description, which stderr shares with
/// the terminal, the parent shell and the supervised program: setting it on a
/// dup would make their writes fail with EAGAIN too. Opening
/// /proc/self/fd/N gives a pipe, FIFO or terminal a description of the log's
/// own instead. A regular file is not reopened: a second description has its
/// own offset, and lines written at it would overwrite what the other holders
/// write at theirs (O_APPEND would not help them), while a dup shares the
/// offset and a regular file never makes a write wait for a reader anyway.
fn open_sink(fd: BorrowedFd<'_>) -> io::Result<(OwnedFd, Sink)> {
    let kind = SFlag::from_bits_truncate(fstat(fd)?.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFSOCK {
        return Ok((fd.try_clone_to_owned()?, Sink::Socket));
    }
    if kind != SFlag::S_IFREG {
        // O_NOCTTY: reopening a terminal must not make it the daemon's
        // controlling terminal. A FIFO without a reader fails with ENXIO,
        // which the shared description then handles (its writes fail too).
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        if let Ok(own) = nix::fcntl::open(path.as_str(), flags, Mode::empty()) {
            return Ok((own, Sink::Own));
        }
    }
    Ok((fd.try_clone_to_owned()?, Sink::Shared))
}

impl Sink {
    /// Writes what fits now, in one call: `None` when nothing could be.
    fn write(self, fd: BorrowedFd<'_>, bytes: &[u8]) -> Option<usize> {
        match self {
            Self::Own => nix::unistd::write(fd, bytes).ok(),
            Self::Socket => send(
                fd.as_raw_fd(),
                bytes,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
            .ok(),
            Self::Shared => {
                let mut room = [PollFd::new(fd, PollFlags::POLLOUT)];
                let ready = poll(&mut room, PollTimeout::ZERO).is_ok_and(|n| n == 1)
                    && room[0]
                        .revents()
                        .is_some_and(|r| r.contains(PollFlags::POLLOUT));
                ready.then(|| nix::unistd::write(fd, bytes).ok()).flatten()
            }
        }
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
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    use nix::fcntl::{fcntl, FcntlArg};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_436_400_123);
        assert_eq!(utc_timestamp(t), "2026-11-23T12:20:00.123Z");
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    /// Everything `read_end` holds now, as lines without their stamp.
    fn drain(read_end: &OwnedFd) -> Vec<String> {
        fcntl(read_end, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).unwrap();
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = nix::unistd::read(read_end, &mut chunk) {
            bytes.extend_from_slice(&chunk[..n]);
        }
        unstamped(&String::from_utf8(bytes).unwrap())
    }

    /// The messages of whole log lines; a torn line fails the test.
    fn unstamped(text: &str) -> Vec<String> {
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        let prefix = format!("dazai[{}] ", std::process::id());
        text.lines()
            .map(|line| {
                let stamped = line.strip_prefix(&prefix).unwrap_or_else(|| {
                    panic!("not a log line: {line:?}");
                });
                let (_, message) = stamped.split_once(' ').unwrap();
                message.to_owned()
            })
            .collect()
    }

    #[test]
    fn a_pipe_gets_a_non_blocking_description_of_its_own_and_stderrs_stays_blocking() {
        let (_read_end, write_end) = nix::unistd::pipe().unwrap();
        let log = Log::to(write_end.as_fd()).unwrap();
        assert_eq!(log.sink, Sink::Own);
        let flags = |fd| OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        assert!(flags(log.fd.as_fd()).contains(OFlag::O_NONBLOCK));
        assert!(!flags(write_end.as_fd()).contains(OFlag::O_NONBLOCK));
    }

    #[test]
    fn a_full_pipe_drops_whole_lines_at_once_and_the_next_line_that_fits_counts_them() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        fcntl(&write_end, FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        let log = Log::to(write_end.as_fd()).unwrap();
        const LINES: usize = 500;

        for i in 0..LINES {
            log.line(format_args!("line {i}"));
        }
        let written = drain(&read_end);
        log.line(format_args!("after"));

        let expected: Vec<String> = (0..written.len()).map(|i| format!("line {i}")).collect();
        assert!(!written.is_empty() && written.len() < LINES, "{written:?}");
        assert_eq!(
            written, expected,
            "only the lines that did not fit are lost"
        );
        let dropped = LINES - written.len();
        assert_eq!(
            drain(&read_end),
            [
                format!("log: {dropped} lines dropped (stderr was full)"),
                "after".to_owned()
            ]
        );
        log.line(format_args!("again"));
        assert_eq!(drain(&read_end), ["again"], "the count starts over");
    }

    #[test]
    fn a_socket_is_written_without_waiting_and_reports_what_it_dropped() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let log = Log::to(ours.as_fd()).unwrap();
        assert_eq!(log.sink, Sink::Socket);

        for i in 0..100_000 {
            log.line(format_args!("line {i}"));
            if log.dropped.get() > 0 {
                break;
            }
        }
        assert!(log.dropped.get() > 0, "the socket never filled up");
        theirs.set_nonblocking(true).unwrap();
        let mut sink = Vec::new();
        let _ = (&theirs).read_to_end(&mut sink);
        log.line(format_args!("after"));

        let mut after = Vec::new();
        let _ = (&theirs).read_to_end(&mut after);
        let after = String::from_utf8(after).unwrap();
        let lines = unstamped(after.trim_start_matches('\n'));
        assert_eq!(lines[1], "after", "{lines:?}");
        assert!(lines[0].ends_with(" lines dropped (stderr was full)"));
    }

    #[test]
    fn a_regular_file_shares_its_offset_with_stderrs_other_writers() {
        let mut file = scratch_file();
        let log = Log::to(file.as_fd()).unwrap();
        assert_eq!(log.sink, Sink::Shared);

        file.write_all(b"before\n").unwrap();
        log.line(format_args!("logged"));
        file.write_all(b"after\n").unwrap();

        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        let (first, rest) = text.split_once('\n').unwrap();
        let (logged, last) = rest.split_once('\n').unwrap();
        assert_eq!((first, last), ("before", "after\n"), "{text:?}");
        assert_eq!(unstamped(&format!("{logged}\n")), ["logged"]);
    }

    /// A scratch file that is deleted at once (the crate has no tempfile).
    fn scratch_file() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("dazai-log-test-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn limited_lets_a_few_lines_of_a_kind_through_per_second_and_counts_the_rest() {
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let log = Log::to(write_end.as_fd()).unwrap();
        let start = Instant::now();

        for i in 0..20 {
            log.limited_at(start, "refusal", format_args!("refused {i}"));
        }
        log.limited_at(start, "other", format_args!("another kind"));
        let later = start + LIMITED_WINDOW;
        log.limited_at(later, "refusal", format_args!("refused 20"));
        log.limited_at(later, "refusal", format_args!("refused 21"));

        let mut expected: Vec<String> =
            (0..LIMITED_LINES).map(|i| format!("refused {i}")).collect();
        expected.push("another kind".into());
        let suppressed = 20 - LIMITED_LINES;
        expected.push(format!(
            "refused 20 ({suppressed} similar lines suppressed)"
        ));
        expected.push("refused 21".into());
        assert_eq!(drain(&read_end), expected);
    }
}
