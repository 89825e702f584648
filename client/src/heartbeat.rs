//! Holding the heartbeat: the connection whose life is the session's life.
//!
//! The client must notice the end of its session by itself. An SSH session
//! without a pty sends no SIGHUP when it drops (the remote command survives,
//! re-parented), so besides SIGHUP the client watches its stdin and stdout for a
//! hang-up and asks the kernel for a signal when its parent dies. A plain EOF on
//! stdin is not a hang-up: `dazai client </dev/null &` keeps working.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use goodnight::pidfd::pidfd_send_signal;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{fstat, SFlag};

use crate::connection::{unexpected, ClientError, Connection};
use crate::protocol::{self, Reply, Request, PING};

/// How the client is asked to hold the heartbeat.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeartbeatOptions<'a> {
    /// Send `PING` this often; `None` derives it from the daemon's ping timeout.
    pub ping_interval: Option<Duration>,
    /// A pidfd of the program SIGINT, SIGTERM and SIGHUP are relayed to
    /// (`dazai run`, as `sudo` does) instead of ending the session; the
    /// session still ends when the parent dies or stdin or stdout hangs up.
    pub relay_signals_to: Option<BorrowedFd<'a>>,
    /// While another session holds the heartbeat, stand by and take it over
    /// when that session is lost, instead of failing with BUSY.
    pub standby: bool,
}

/// Why the heartbeat ended (each ends the session on purpose, except the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatEnd {
    /// A session-ending signal arrived (SIGHUP, SIGTERM, SIGINT; SIGHUP also on parent death).
    Signal(Signal),
    /// stdin or stdout hung up: the terminal or SSH channel is gone.
    SessionHungUp(&'static str),
    /// The parent process is gone (it died, or was already gone at the start).
    ParentGone,
}

/// Signals that end the session; blocked and read through a signalfd.
fn session_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        set.add(signal);
    }
    set
}

/// Attaches the heartbeat on `socket` and holds it until the session ends.
///
/// Returns how the session ended; an `Err` means the heartbeat could not be
/// attached or the daemon went away while it was held.
pub fn hold_heartbeat(
    socket: &Path,
    options: HeartbeatOptions<'_>,
) -> Result<HeartbeatEnd, ClientError> {
    let parent = nix::unistd::getppid();
    let signals = session_signals();
    signals.thread_block().map_err(io::Error::from)?;
    let signal_fd =
        SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC).map_err(io::Error::from)?;
    // The parent's death is the session's end even when nobody sends SIGHUP.
    nix::sys::prctl::set_pdeathsig(Signal::SIGHUP).map_err(io::Error::from)?;
    if nix::unistd::getppid() != parent {
        return Ok(HeartbeatEnd::ParentGone);
    }

    let mut connection = Connection::open(socket)?;
    let request = if options.standby {
        Request::HeartbeatStandby
    } else {
        Request::Heartbeat
    };
    let mut standing_by = false;
    let mut ping_interval = match connection.request(&request)? {
        Reply::Ok(text) if text.starts_with(protocol::STANDING_BY) => {
            eprintln!("dazai: {text}");
            standing_by = true;
            None
        }
        Reply::Ok(text) => ping_interval(options.ping_interval, protocol::ping_timeout_of(&text)),
        other => return Err(unexpected(other)),
    };

    let stdin = io::stdin();
    let stdout = io::stdout();
    let watched_stdin = is_hangup_capable(stdin.as_fd()).then(|| stdin.as_fd());
    let watched_stdout = is_hangup_capable(stdout.as_fd()).then(|| stdout.as_fd());
    let mut next_ping = ping_interval.map(|every| Instant::now() + every);

    loop {
        let mut fds = vec![
            PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(connection.stream().as_fd(), PollFlags::POLLIN),
        ];
        // Events 0: only POLLHUP/POLLERR are reported, so readable data on
        // stdin (which is not ours to consume) never wakes the loop.
        for fd in [watched_stdin, watched_stdout].into_iter().flatten() {
            fds.push(PollFd::new(fd, PollFlags::empty()));
        }
        let timeout = next_ping.map_or(PollTimeout::NONE, |at| {
            let left = at.saturating_duration_since(Instant::now());
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(ClientError::Io(errno.into())),
        }
        let revents: Vec<PollFlags> = fds
            .iter()
            .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);

        if revents[0].contains(PollFlags::POLLIN) {
            if let Some(info) = signal_fd.read_signal().map_err(io::Error::from)? {
                let signal = Signal::try_from(info.ssi_signo as i32).unwrap_or(Signal::SIGHUP);
                // The parent's death arrives as SIGHUP too: that one ends the session.
                if nix::unistd::getppid() != parent {
                    return Ok(HeartbeatEnd::ParentGone);
                }
                match options.relay_signals_to {
                    // A program that has already ended needs no signal.
                    Some(program) => drop(pidfd_send_signal(program, Some(signal))),
                    None => return Ok(HeartbeatEnd::Signal(signal)),
                }
            }
        }
        if !revents[1].is_empty() && standing_by {
            // The only line a standby connection receives: the takeover.
            match connection.read_reply()? {
                Reply::Ok(text) => {
                    eprintln!("dazai: the other session ended; this one holds the heartbeat now");
                    standing_by = false;
                    ping_interval = self::ping_interval(
                        options.ping_interval,
                        protocol::ping_timeout_of(&text),
                    );
                    next_ping = ping_interval.map(|every| Instant::now() + every);
                }
                other => return Err(unexpected(other)),
            }
        } else if !revents[1].is_empty() {
            drain_pongs(&connection)?;
        }
        let hung_up = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
        let mut session_fds = revents[2..].iter();
        for (name, watched) in [("stdin", watched_stdin), ("stdout", watched_stdout)] {
            if watched.is_some() && session_fds.next().is_some_and(|r| r.intersects(hung_up)) {
                return Ok(HeartbeatEnd::SessionHungUp(name));
            }
        }
        if let (Some(at), Some(every)) = (next_ping, ping_interval) {
            if Instant::now() >= at {
                connection.send_line(PING)?;
                next_ping = Some(Instant::now() + every);
            }
        }
    }
}

/// How often to ping: as asked, else a third of the daemon's ping timeout.
/// An interval that is not shorter than the timeout would lose the session
/// between two pings: a third of the timeout is used instead, and said.
fn ping_interval(asked: Option<Duration>, timeout_secs: Option<u64>) -> Option<Duration> {
    let third = timeout_secs.map(|secs| Duration::from_millis(secs * 1000 / 3));
    match (asked, timeout_secs) {
        (Some(interval), Some(secs)) if interval >= Duration::from_secs(secs) => {
            eprintln!(
                "dazai: --ping-interval {}s is not shorter than the daemon's --ping-timeout {secs}s; pinging every {:.1}s instead",
                interval.as_secs(),
                third.unwrap_or_default().as_secs_f64()
            );
            third
        }
        (Some(interval), _) => Some(interval),
        (None, _) => third,
    }
}

/// Reads what the daemon sent on the heartbeat: `PONG`s, or the end.
fn drain_pongs(connection: &Connection) -> Result<(), ClientError> {
    let mut buffer = [0u8; 64];
    match connection.stream().read(&mut buffer) {
        Ok(0) => Err(ClientError::DaemonGone),
        Ok(n) if buffer[..n].starts_with(b"ERR") => Err(ClientError::Refused(
            String::from_utf8_lossy(&buffer[4..n]).trim_end().to_owned(),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
        Err(e) => Err(ClientError::Io(e)),
    }
}

/// Only pipes, sockets and terminals can hang up; a file or `/dev/null` cannot.
fn is_hangup_capable(fd: BorrowedFd<'_>) -> bool {
    let Ok(stat) = fstat(fd) else {
        return false;
    };
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    kind == SFlag::S_IFIFO
        || kind == SFlag::S_IFSOCK
        || (kind == SFlag::S_IFCHR && nix::unistd::isatty(fd).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_interval_as_long_as_the_timeout_becomes_a_third_of_it() {
        let secs = Duration::from_secs;
        assert_eq!(ping_interval(Some(secs(9)), Some(9)), Some(secs(3)));
        assert_eq!(ping_interval(Some(secs(20)), Some(9)), Some(secs(3)));
        assert_eq!(ping_interval(Some(secs(2)), Some(9)), Some(secs(2)));
        assert_eq!(ping_interval(None, Some(9)), Some(secs(3)));
        assert_eq!(ping_interval(Some(secs(5)), None), Some(secs(5)));
        assert_eq!(ping_interval(None, None), None);
    }
}
