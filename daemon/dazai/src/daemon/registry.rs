//! Processes registered with the daemon: the panic kills each of them.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use goodnight::pidfd::{pidfd_open, pidfd_send_signal};

/// Most processes held at once: keeps the status reply and the panic bounded.
pub const MAX_REGISTERED: usize = 1024;

/// One registered process.
struct Entry {
    pid: Pid,
    pidfd: OwnedFd,
    /// The panic also kills the process group `pid` leads.
    group: bool,
}

/// Registered processes, each held by a pidfd.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// Registers `pid`, held by `held` where the kernel gave a pidfd of it at
    /// connect time (`SO_PEERPIDFD`), else by a `pidfd_open` now; the caller
    /// has already checked the requester may signal it and, with `group`,
    /// that it leads its process group.
    pub fn register(&mut self, pid: Pid, held: Option<OwnedFd>, group: bool) -> Result<(), Errno> {
        self.forget_exited();
        if let Some(entry) = self.entries.iter_mut().find(|e| e.pid == pid) {
            entry.group |= group;
            return Ok(());
        }
        if self.entries.len() >= MAX_REGISTERED {
            return Err(Errno::ENOSPC);
        }
        let pidfd = match held {
            Some(pidfd) => pidfd,
            None => pidfd_open(pid)?,
        };
        self.entries.push(Entry { pid, pidfd, group });
        Ok(())
    }

    /// The registered pids that are still alive.
    pub fn live_pids(&self) -> Vec<i32> {
        self.entries
            .iter()
            .filter(|e| pidfd_send_signal(e.pidfd.as_fd(), None).is_ok())
            .map(|e| e.pid.as_raw())
            .collect()
    }

    /// SIGKILLs every registered process, and the process group of each one
    /// registered with its group; returns the pids that were signalled.
    ///
    /// A group is signalled only while its leader is still held (alive or a
    /// zombie not yet reaped): until then the kernel cannot hand the leader's
    /// pid, and so the group id, to another process, so the kill reaches
    /// exactly the group that was registered.
    pub fn kill_all(&self) -> Vec<i32> {
        self.entries
            .iter()
            .filter(|e| {
                let held = pidfd_send_signal(e.pidfd.as_fd(), None).is_ok();
                if held && e.group {
                    let _ = kill(Pid::from_raw(-e.pid.as_raw()), Signal::SIGKILL);
                }
                held && pidfd_send_signal(e.pidfd.as_fd(), Some(Signal::SIGKILL)).is_ok()
            })
            .map(|e| e.pid.as_raw())
            .collect()
    }

    fn forget_exited(&mut self) {
        self.entries
            .retain(|e| pidfd_send_signal(e.pidfd.as_fd(), None).is_ok());
    }
}
