//! Process descriptors: a pidfd names one process for as long as the
//! descriptor lives, so a process that exits cannot be confused with a later
//! one that reuses its pid, and a signal never reaches a stranger. std and
//! nix do not wrap these two system calls yet.

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

/// `SO_PEERPIDFD` (Linux >= 6.5): a pidfd of the process that connected
/// `socket`, taken by the kernel at `connect(2)`, so it names that process
/// even if it has since exited and its pid was reused. `ENOPROTOOPT` on older
/// kernels: there, only `pidfd_open` of the `SO_PEERCRED` pid remains.
pub fn peer_pidfd(socket: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes (one int) into `fd`,
    // which lives on this stack frame for the call; the socket is borrowed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 || fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
