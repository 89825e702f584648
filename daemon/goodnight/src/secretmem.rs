//! `memfd_secret(2)`: memory the kernel takes out of its own direct map, so that
//! not even root can read it through `/proc/PID/mem`, `ptrace(PTRACE_PEEKDATA)`
//! or `process_vm_readv(2)` (Linux >= 5.14, `CONFIG_SECRETMEM`).
//!
//! This module only creates the file; `secret_buffer` maps it between its
//! guard pages and reports which backend holds the secret, and why.

use std::fmt;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::unistd;

/// Why the kernel gives this process no secret memory (`memfd_secret(2)`).
///
/// `Display` is the reason alone, e.g. "kernel booted without
/// secretmem.enable=1"; [`SecretError::SecretMemUnavailable`](crate::SecretError::SecretMemUnavailable)
/// adds the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretMemUnavailable {
    /// `memfd_secret(2)` returned `ENOSYS` and the kernel reports its
    /// `secretmem.enable` parameter off (Debian's 6.1 kernels, for one, have
    /// `CONFIG_SECRETMEM=y` but leave it off unless booted with `secretmem.enable=1`).
    DisabledAtBoot,
    /// `memfd_secret(2)` returned `ENOSYS` for another or an unknown reason:
    /// Linux older than 5.14, built without `CONFIG_SECRETMEM`, unable to
    /// remove pages from its direct map, or disabled at boot where the
    /// parameter cannot be read (it is readable by root only).
    NotInKernel,
    /// Mapping the pages would exceed `RLIMIT_MEMLOCK`: secret memory is
    /// locked by the kernel and charged against that limit.
    OverMemlockLimit {
        /// Bytes that were to be mapped (the capacity rounded up to whole pages).
        requested: usize,
        /// The soft `RLIMIT_MEMLOCK` at the time, in bytes; `None` when unlimited or unreadable.
        soft_limit: Option<u64>,
    },
    /// The kernel granted the mapping but refused its pages when they were
    /// first written (by the kernel itself, so that the refusal is an error
    /// and not a SIGBUS). Kernels that charge secret memory against
    /// `RLIMIT_MEMLOCK` at that moment instead of at mmap (Debian's 6.1 and 6.12)
    /// refuse here when the limit is too small; any kernel does when it is
    /// out of memory.
    FirstTouchRefused {
        /// Bytes that were to be committed (the capacity rounded up to whole pages).
        requested: usize,
        /// The soft `RLIMIT_MEMLOCK` at the time, in bytes; `None` when unlimited or unreadable.
        soft_limit: Option<u64>,
        /// What the kernel's write returned (`EFAULT`).
        errno: Errno,
    },
    /// A call on the way refused for another reason.
    Refused {
        /// The call, e.g. `"memfd_secret(2)"` or `"mmap(2)"`.
        call: &'static str,
        /// What it returned.
        errno: Errno,
    },
}

impl SecretMemUnavailable {
    /// How to get secret memory, or to do without it; one clause.
    pub(crate) fn fix(&self) -> &'static str {
        match self {
            SecretMemUnavailable::DisabledAtBoot => {
                "boot with secretmem.enable=1 on the kernel command line, or use the locked \
                 backend (--memory locked, DAZAI_MEMORY=locked)"
            }
            SecretMemUnavailable::NotInKernel => {
                "run Linux >= 5.14 built with CONFIG_SECRETMEM (booted with secretmem.enable=1 \
                 where it is off by default), or use the locked backend (--memory locked, \
                 DAZAI_MEMORY=locked)"
            }
            SecretMemUnavailable::OverMemlockLimit { .. }
            | SecretMemUnavailable::FirstTouchRefused { .. } => {
                "raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd) or run with CAP_IPC_LOCK"
            }
            SecretMemUnavailable::Refused { .. } => {
                "allow memfd_secret in any seccomp filter (container runtimes may forbid it), \
                 or use the locked backend (--memory locked, DAZAI_MEMORY=locked)"
            }
        }
    }
}

impl fmt::Display for SecretMemUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretMemUnavailable::DisabledAtBoot => {
                f.write_str("kernel booted without secretmem.enable=1")
            }
            SecretMemUnavailable::NotInKernel => f.write_str(
                "memfd_secret(2) is not implemented by this kernel (ENOSYS: Linux older than \
                 5.14, built without CONFIG_SECRETMEM, or booted without secretmem.enable=1)",
            ),
            SecretMemUnavailable::OverMemlockLimit {
                requested,
                soft_limit: Some(limit),
            } => write!(
                f,
                "{requested} bytes of secret memory do not fit under RLIMIT_MEMLOCK \
                 ({limit} bytes; secret memory is locked and charged against it)"
            ),
            SecretMemUnavailable::OverMemlockLimit {
                requested,
                soft_limit: None,
            } => write!(
                f,
                "mapping {requested} bytes of secret memory was refused (EAGAIN: locked memory \
                 exhausted)"
            ),
            SecretMemUnavailable::FirstTouchRefused {
                requested,
                soft_limit: Some(limit),
                errno,
            } => write!(
                f,
                "the kernel refused {requested} bytes of secret memory at their first touch \
                 ({errno:?}): over RLIMIT_MEMLOCK ({limit} bytes; this kernel charges secret \
                 memory there), or out of memory"
            ),
            SecretMemUnavailable::FirstTouchRefused {
                requested,
                soft_limit: None,
                errno,
            } => write!(
                f,
                "the kernel refused {requested} bytes of secret memory at their first touch \
                 ({errno:?}: out of memory)"
            ),
            SecretMemUnavailable::Refused { call, errno } => {
                write!(f, "{call} failed ({errno:?}: {})", errno.desc())
            }
        }
    }
}

/// A new, close-on-exec secret-memory file of `len` bytes, ready to map.
pub(crate) fn create(len: usize) -> Result<OwnedFd, SecretMemUnavailable> {
    let fd = memfd_secret().map_err(|errno| match errno {
        Errno::ENOSYS if disabled_at_boot() => SecretMemUnavailable::DisabledAtBoot,
        Errno::ENOSYS => SecretMemUnavailable::NotInKernel,
        errno => SecretMemUnavailable::Refused {
            call: "memfd_secret(2)",
            errno,
        },
    })?;
    let refused = |errno| SecretMemUnavailable::Refused {
        call: "ftruncate(2)",
        errno,
    };
    let len = libc::off_t::try_from(len).map_err(|_| refused(Errno::EFBIG))?;
    unistd::ftruncate(&fd, len).map_err(refused)?;
    Ok(fd)
}

/// The raw system call: libc has no wrapper for it.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn memfd_secret() -> Result<OwnedFd, Errno> {
    use std::os::fd::{FromRawFd, RawFd};

    // O_CLOEXEC is the only flag the call knows; it keeps the descriptor out
    // of an exec'd program even in the moment before it is closed.
    let flags = libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: memfd_secret takes one integer argument and no pointers, so the
    // call cannot touch this process's memory; it returns -1 with errno set, or
    // a new descriptor.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_memfd_secret, flags) })?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel has just created this descriptor for this call; no
    // other handle to it exists, so owning it (and closing it on drop) is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Elsewhere there is no secret memory to ask for.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn memfd_secret() -> Result<OwnedFd, Errno> {
    Err(Errno::ENOSYS)
}

/// Whether the kernel says it was booted with secret memory switched off.
/// The parameter is mode 0400: for anyone but root this is `false`, and the
/// reason given is the general one ([`SecretMemUnavailable::NotInKernel`]).
fn disabled_at_boot() -> bool {
    std::fs::read_to_string("/sys/module/secretmem/parameters/enable")
        .is_ok_and(|value| value.trim() == "N")
}
