//! Processes registered with the daemon: the panic kills each of them.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::sys::{pidfd_open, pidfd_send_signal};

/// Most processes held at once: keeps the status reply and the panic bounded.
pub const MAX_REGISTERED: usize = 1024;

/// Registered processes, each held by a pidfd.
#[derive(Default)]
pub struct Registry {
    entries: Vec<(Pid, OwnedFd)>,
}

impl Registry {
    /// Registers `pid`; the caller has already checked the requester may signal it.
    pub fn register(&mut self, pid: Pid) -> Result<(), Errno> {
        self.forget_exited();
        if self.contains(pid) {
            return Ok(());
        }
        if self.entries.len() >= MAX_REGISTERED {
            return Err(Errno::ENOSPC);
        }
        let pidfd = pidfd_open(pid)?;
        self.entries.push((pid, pidfd));
        Ok(())
    }

    /// Whether `pid` is registered and still the same, living process.
    pub fn contains(&self, pid: Pid) -> bool {
        self.entries
            .iter()
            .any(|(held, fd)| *held == pid && pidfd_send_signal(fd.as_fd(), None).is_ok())
    }

    /// The registered pids that are still alive.
    pub fn live_pids(&self) -> Vec<i32> {
        self.entries
            .iter()
            .filter(|(_, fd)| pidfd_send_signal(fd.as_fd(), None).is_ok())
            .map(|(pid, _)| pid.as_raw())
            .collect()
    }

    /// SIGKILLs every registered process; returns the pids that were signalled.
    pub fn kill_all(&self) -> Vec<i32> {
        self.entries
            .iter()
            .filter(|(_, fd)| pidfd_send_signal(fd.as_fd(), Some(Signal::SIGKILL)).is_ok())
            .map(|(pid, _)| pid.as_raw())
            .collect()
    }

    fn forget_exited(&mut self) {
        self.entries
            .retain(|(_, fd)| pidfd_send_signal(fd.as_fd(), None).is_ok());
    }
}
