//! [`SecretError`]: why a secret buffer could not be created or filled.

use std::fmt;

use nix::errno::Errno;

use crate::secretmem::SecretMemUnavailable;
use crate::MemoryBackend;

/// Why a [`SecretBuffer`](crate::SecretBuffer) could not be created or filled.
///
/// `Display` is one line, cause then fix, and never contains secret bytes
/// (no variant holds any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// The pages could not be locked in RAM: `mlock(2)` refused (locked
    /// backend), or mapping secret memory would exceed `RLIMIT_MEMLOCK`
    /// (secretmem backend, `EAGAIN`).
    LockRefused {
        /// Bytes that were to be locked (the capacity rounded up to whole pages).
        requested: usize,
        /// The soft `RLIMIT_MEMLOCK` at the time of the refusal, in bytes;
        /// `None` when unlimited (or, in theory, unreadable).
        soft_limit: Option<u64>,
        /// What `mlock(2)` or `mmap(2)` returned.
        errno: Errno,
    },
    /// [`MemoryBackend::SecretMem`] was asked for and the kernel gives no
    /// secret memory.
    SecretMemUnavailable(SecretMemUnavailable),
    /// A memory backend was named that does not exist (e.g. in `DAZAI_MEMORY`).
    UnknownMemoryBackend {
        /// The name given.
        value: String,
    },
    /// `madvise(2)` refused an advice the buffer's guarantees depend on.
    AdviseRefused {
        /// The advice, e.g. `"MADV_DONTDUMP"` or `"MADV_DONTFORK"`.
        advice: &'static str,
        /// What `madvise(2)` returned.
        errno: Errno,
    },
    /// The mapping (data pages plus two guard pages) could not be created.
    OutOfAddressSpace {
        /// The capacity that was asked for.
        requested: usize,
        /// What `mmap(2)`/`mprotect(2)` returned (`ENOMEM` when the size overflows).
        errno: Errno,
    },
    /// The source held more bytes than the buffer's capacity; the buffer has
    /// been wiped.
    TooLong {
        /// The buffer's capacity in bytes.
        capacity: usize,
    },
    /// `read(2)` failed; the buffer has been wiped.
    Read {
        /// What `read(2)` returned.
        errno: Errno,
    },
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::LockRefused {
                requested,
                soft_limit: Some(limit),
                errno,
            } => write!(
                f,
                "cannot lock {requested} bytes of secret memory: RLIMIT_MEMLOCK is {limit} bytes \
                 ({errno:?}); fix: raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd) \
                 or run with CAP_IPC_LOCK"
            ),
            SecretError::LockRefused {
                requested,
                soft_limit: None,
                errno,
            } => write!(
                f,
                "cannot lock {requested} bytes of secret memory although RLIMIT_MEMLOCK is \
                 unlimited ({errno:?}: {}); fix: free RAM or hold fewer or smaller secrets",
                errno.desc()
            ),
            SecretError::SecretMemUnavailable(why) => {
                write!(f, "secretmem unavailable: {why}; fix: {}", why.fix())
            }
            SecretError::UnknownMemoryBackend { value } => write!(
                f,
                "{value:?} is not a memory backend (from {} or --memory); fix: name auto, \
                 secretmem or locked",
                MemoryBackend::ENV_VAR
            ),
            SecretError::AdviseRefused { advice, errno } => write!(
                f,
                "cannot apply madvise({advice}) to secret memory ({errno:?}: {}); fix: run on \
                 a Linux kernel that supports it (>= 3.4) and allow madvise in any seccomp filter",
                errno.desc()
            ),
            SecretError::OutOfAddressSpace { requested, errno } => write!(
                f,
                "cannot map {requested} bytes of secret memory plus guard pages ({errno:?}: {}); \
                 fix: ask for a smaller buffer or raise RLIMIT_AS / vm.max_map_count",
                errno.desc()
            ),
            SecretError::TooLong { capacity } => write!(
                f,
                "the secret is longer than the {capacity}-byte limit (buffer wiped); \
                 fix: hold a secret of at most {capacity} bytes (a larger one, such as a key \
                 file, belongs in a file the program reads, not in the daemon)"
            ),
            // Secret memory is out of the kernel's direct map: a file system
            // that reads with zero-copy (9p, seen in the lab's VMs) cannot fill it.
            SecretError::Read {
                errno: Errno::EFAULT,
            } => write!(
                f,
                "cannot read the secret (EFAULT: the kernel could not copy into secret memory; \
                 buffer wiped); fix: pass it through a pipe (e.g. `3< <(cat FILE)` with fd:3), \
                 or choose the locked backend"
            ),
            SecretError::Read { errno } => write!(
                f,
                "cannot read the secret ({errno:?}: {}; buffer wiped); fix: pass a readable, \
                 blocking file descriptor (tty, pipe or file)",
                errno.desc()
            ),
        }
    }
}

impl std::error::Error for SecretError {}
