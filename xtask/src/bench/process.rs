//! Processes watched from the outside: each held by a pidfd, and the
//! `CLOCK_MONOTONIC` instant at which it was seen to die.
//!
//! A pidfd becomes readable when its process exits, whoever its parent is, so
//! one `poll(2)` over many of them timestamps each death as it happens without
//! asking any of the processes, and without reaping anything first.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A descriptor naming one process for as long as it is open: its pid cannot
/// name a stranger even after the process died and was reaped.
pub(crate) struct Pidfd(OwnedFd);

impl Pidfd {
    /// `pidfd_open(2)` for `pid`.
    pub(crate) fn open(pid: u32) -> Result<Pidfd> {
        // SAFETY: the syscall takes a pid and flags by value and returns a new
        // descriptor or -1; no memory is shared with the kernel.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            bail!(
                "pidfd_open({pid}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Whether the process has exited (a zombie counts as exited).
    pub(crate) fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.0.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1..))
    }
}

impl AsFd for Pidfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A child of the bench, held by a pidfd; killed and reaped when dropped
/// unless the bench reaped it already.
pub(crate) struct Watched {
    child: Child,
    /// The child's pidfd.
    pub pidfd: Pidfd,
    status: Option<ExitStatus>,
}

impl Watched {
    /// Spawns `command` with its standard streams as configured, or null.
    pub(crate) fn spawn(command: &mut Command) -> Result<Watched> {
        let child = command
            .spawn()
            .with_context(|| format!("spawn {command:?}"))?;
        Watched::hold(child)
    }

    /// Holds a child that is already running.
    pub(crate) fn hold(child: Child) -> Result<Watched> {
        // The child is ours and not yet reaped, so its pid still names it.
        let pidfd = Pidfd::open(child.id())?;
        Ok(Watched {
            child,
            pidfd,
            status: None,
        })
    }

    /// A `sleep 1000` to register with the daemon: the panic must kill it.
    pub(crate) fn sleeper() -> Result<Watched> {
        Watched::spawn(
            Command::new("sleep")
                .arg("1000")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends SIGKILL (the child is not reaped yet, so the pid is still its own).
    pub(crate) fn kill(&self) -> Result<()> {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL)
            .with_context(|| format!("SIGKILL pid {}", self.pid()))
    }

    /// Reaps the child, which must already have exited or be about to.
    pub(crate) fn reap(&mut self) -> Result<ExitStatus> {
        let status = self.child.wait().context("wait for a child")?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The instants at which each of a set of processes was seen to die.
pub(crate) struct DeathWatch<'a> {
    pidfds: Vec<BorrowedFd<'a>>,
    seen: Vec<Option<Instant>>,
}

impl<'a> DeathWatch<'a> {
    pub(crate) fn new(pidfds: impl IntoIterator<Item = &'a Pidfd>) -> DeathWatch<'a> {
        let pidfds: Vec<BorrowedFd<'a>> = pidfds.into_iter().map(|p| p.as_fd()).collect();
        let seen = vec![None; pidfds.len()];
        DeathWatch { pidfds, seen }
    }

    /// Polls until every process has died or `until` has passed, recording
    /// the instant `poll` returned for each death it reported. A death is
    /// thus seen at most one wake-up of this process late.
    pub(crate) fn wait(&mut self, until: Instant) -> Result<()> {
        loop {
            let pending: Vec<usize> = (0..self.seen.len())
                .filter(|&i| self.seen[i].is_none())
                .collect();
            let now = Instant::now();
            if pending.is_empty() || now >= until {
                return Ok(());
            }
            let mut fds: Vec<PollFd<'_>> = pending
                .iter()
                .map(|&i| PollFd::new(self.pidfds[i], PollFlags::POLLIN))
                .collect();
            // Round up, so that the loop does not spin in the last millisecond.
            let left = until - now + Duration::from_micros(999);
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => bail!("poll over pidfds failed: {errno}"),
            }
            let woke = Instant::now();
            for (fd, &i) in fds.iter().zip(&pending) {
                if fd.revents().is_some_and(|r| !r.is_empty()) {
                    self.seen[i] = Some(woke);
                }
            }
        }
    }

    /// Waits for every death, failing after `patience`.
    pub(crate) fn wait_all(&mut self, patience: Duration, what: &str) -> Result<()> {
        self.wait(Instant::now() + patience)?;
        let alive = self.seen.iter().filter(|s| s.is_none()).count();
        if alive > 0 {
            bail!(
                "{alive} of {} processes ({what}) still alive after {} s",
                self.seen.len(),
                patience.as_secs()
            );
        }
        Ok(())
    }

    /// When each process was seen to die, in the order given.
    pub(crate) fn seen(&self) -> &[Option<Instant>] {
        &self.seen
    }
}
