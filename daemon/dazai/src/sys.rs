//! The two process-descriptor system calls std and nix do not wrap yet.
//!
//! A pidfd names one process for as long as the descriptor lives, so a
//! registered process that exits cannot be confused with a later process that
//! reuses its pid: the panic never signals a stranger.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// `pidfd_open(2)`: a close-on-exec descriptor for `pid`.
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: the syscall takes a pid and flags by value and returns a new
    // descriptor or -1; no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`; `None` only checks that the process still exists.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Option<Signal>) -> Result<(), Errno> {
    let signo = signal.map_or(0, |s| s as i32);
    // SAFETY: a null siginfo is documented as "like kill(2)"; the descriptor is
    // borrowed, so it stays open for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// `_exit(2)`: ends a forked process without running the parent's exit
/// handlers or flushing buffers it inherited.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping destructors
    // is the point in a forked child.
    unsafe { libc::_exit(code) }
}
