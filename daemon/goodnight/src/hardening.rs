//! Process hardening: one function per idea, each returning a small report
//! whose `Display` is one log line.
//!
//! The daemon calls them in its start-up order (docs/design.md, "Start-up") and logs each report;
//! whether an error is fatal is the caller's policy.

use std::fmt;

use nix::errno::Errno;
use nix::libc::{rlim_t, RLIM_INFINITY};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// What [`raise_memlock_limit`] did to `RLIMIT_MEMLOCK` (bytes; `None` = unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemlockReport {
    /// Soft limit before the call.
    pub before: Option<u64>,
    /// Soft limit after the call (equal to `hard`).
    pub after: Option<u64>,
    /// Hard limit, unchanged.
    pub hard: Option<u64>,
}

impl fmt::Display for MemlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.before == self.after {
            write!(
                f,
                "RLIMIT_MEMLOCK soft limit already at the hard limit ({})",
                Bytes(self.hard)
            )
        } else {
            write!(
                f,
                "RLIMIT_MEMLOCK soft limit raised from {} to {} (the hard limit)",
                Bytes(self.before),
                Bytes(self.after)
            )
        }
    }
}

/// What [`forbid_core_dumps_and_tracing`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpabilityReport {
    /// Whether the process was dumpable before the call.
    pub was_dumpable: bool,
    /// Whether it is dumpable now, as read back with `PR_GET_DUMPABLE`
    /// (always `false` in a report; a `true` read-back is an error instead).
    pub dumpable: bool,
}

impl fmt::Display for DumpabilityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process non-dumpable (PR_SET_DUMPABLE 0, verified; was {}): no core dumps, \
             no same-UID ptrace, /proc/PID/mem closed",
            if self.was_dumpable {
                "dumpable"
            } else {
                "already non-dumpable"
            }
        )
    }
}

/// What [`limit_core_size_to_zero`] did to `RLIMIT_CORE` (bytes; `None` = unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreLimitReport {
    /// Soft limit before the call.
    pub soft_before: Option<u64>,
    /// Hard limit before the call.
    pub hard_before: Option<u64>,
}

impl fmt::Display for CoreLimitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RLIMIT_CORE set to 0/0 (was soft {}, hard {})",
            Bytes(self.soft_before),
            Bytes(self.hard_before)
        )
    }
}

/// Why a hardening step failed. `Display` is one line: cause, then fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardeningError {
    /// `getrlimit(2)` failed.
    GetLimit {
        /// The resource, e.g. `"RLIMIT_MEMLOCK"`.
        resource: &'static str,
        /// What `getrlimit(2)` returned.
        errno: Errno,
    },
    /// `setrlimit(2)` refused the new limits.
    SetLimit {
        /// The resource, e.g. `"RLIMIT_CORE"`.
        resource: &'static str,
        /// The soft limit asked for (`None` = unlimited).
        soft: Option<u64>,
        /// The hard limit asked for (`None` = unlimited).
        hard: Option<u64>,
        /// What `setrlimit(2)` returned.
        errno: Errno,
    },
    /// A `prctl(2)` call failed.
    Prctl {
        /// The operation, e.g. `"PR_SET_DUMPABLE"`.
        operation: &'static str,
        /// What `prctl(2)` returned.
        errno: Errno,
    },
    /// `PR_SET_DUMPABLE 0` succeeded but `PR_GET_DUMPABLE` still reads dumpable.
    StillDumpable,
}

impl fmt::Display for HardeningError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HardeningError::GetLimit { resource, errno } => write!(
                f,
                "cannot read {resource} ({errno:?}: {}); fix: allow getrlimit/prlimit64 in any \
                 seccomp filter applied before start-up",
                errno.desc()
            ),
            HardeningError::SetLimit {
                resource,
                soft,
                hard,
                errno,
            } => write!(
                f,
                "cannot set {resource} to soft {}, hard {} ({errno:?}: {}); fix: allow \
                 setrlimit/prlimit64 in any seccomp filter and do not start under a security \
                 policy that pins resource limits",
                Bytes(*soft),
                Bytes(*hard),
                errno.desc()
            ),
            HardeningError::Prctl { operation, errno } => write!(
                f,
                "prctl({operation}) failed ({errno:?}: {}); fix: run on Linux and allow prctl \
                 in any seccomp filter applied before start-up",
                errno.desc()
            ),
            HardeningError::StillDumpable => f.write_str(
                "PR_SET_DUMPABLE 0 did not stick (PR_GET_DUMPABLE still reads dumpable); fix: \
                 check for a security module or seccomp filter that fakes prctl results",
            ),
        }
    }
}

impl std::error::Error for HardeningError {}

/// Raises the soft `RLIMIT_MEMLOCK` to the hard limit, so the process may lock
/// as much secret memory as it is allowed to.
///
/// Whether the hard limit suffices shows up when a [`SecretBuffer`](crate::SecretBuffer)
/// is created: a refused lock is [`SecretError::LockRefused`](crate::SecretError::LockRefused)
/// naming the limit, never a silently unlocked buffer.
pub fn raise_memlock_limit() -> Result<MemlockReport, HardeningError> {
    let (soft, hard) = get_limit(Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK")?;
    if soft != hard {
        set_limit(Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK", hard, hard)?;
    }
    Ok(MemlockReport {
        before: bytes_or_unlimited(soft),
        after: bytes_or_unlimited(hard),
        hard: bytes_or_unlimited(hard),
    })
}

/// The current `RLIMIT_MEMLOCK` as `(soft, hard)` in bytes; `None` = unlimited.
pub fn memlock_limit() -> Result<(Option<u64>, Option<u64>), HardeningError> {
    let (soft, hard) = get_limit(Resource::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK")?;
    Ok((bytes_or_unlimited(soft), bytes_or_unlimited(hard)))
}

/// Makes the process non-dumpable with `prctl(PR_SET_DUMPABLE, 0)` and verifies
/// it with `PR_GET_DUMPABLE`: no core dumps, no ptrace attach and no
/// `/proc/PID/mem` for processes of the same UID (only `CAP_SYS_PTRACE` can).
///
/// The kernel resets this flag whenever the process changes its credentials
/// (setuid, setgid, …), so call it after any such change.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn forbid_core_dumps_and_tracing() -> Result<DumpabilityReport, HardeningError> {
    let was_dumpable = is_dumpable()?;
    nix::sys::prctl::set_dumpable(false).map_err(|errno| HardeningError::Prctl {
        operation: "PR_SET_DUMPABLE",
        errno,
    })?;
    if is_dumpable()? {
        return Err(HardeningError::StillDumpable);
    }
    Ok(DumpabilityReport {
        was_dumpable,
        dumpable: false,
    })
}

/// Fails: this platform has no `PR_SET_DUMPABLE`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn forbid_core_dumps_and_tracing() -> Result<DumpabilityReport, HardeningError> {
    Err(HardeningError::Prctl {
        operation: "PR_SET_DUMPABLE",
        errno: Errno::ENOSYS,
    })
}

/// Sets `RLIMIT_CORE` to 0/0: a second layer against core dumps, in case
/// something makes the process dumpable again. The hard limit is lowered too,
/// so the process cannot raise it back.
pub fn limit_core_size_to_zero() -> Result<CoreLimitReport, HardeningError> {
    let (soft, hard) = get_limit(Resource::RLIMIT_CORE, "RLIMIT_CORE")?;
    set_limit(Resource::RLIMIT_CORE, "RLIMIT_CORE", 0, 0)?;
    Ok(CoreLimitReport {
        soft_before: bytes_or_unlimited(soft),
        hard_before: bytes_or_unlimited(hard),
    })
}

/// Whether the process is dumpable (`PR_GET_DUMPABLE` reads non-zero).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn is_dumpable() -> Result<bool, HardeningError> {
    nix::sys::prctl::get_dumpable().map_err(|errno| HardeningError::Prctl {
        operation: "PR_GET_DUMPABLE",
        errno,
    })
}

/// Fails: this platform has no `PR_GET_DUMPABLE`.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn is_dumpable() -> Result<bool, HardeningError> {
    Err(HardeningError::Prctl {
        operation: "PR_GET_DUMPABLE",
        errno: Errno::ENOSYS,
    })
}

fn get_limit(resource: Resource, name: &'static str) -> Result<(rlim_t, rlim_t), HardeningError> {
    getrlimit(resource).map_err(|errno| HardeningError::GetLimit {
        resource: name,
        errno,
    })
}

fn set_limit(
    resource: Resource,
    name: &'static str,
    soft: rlim_t,
    hard: rlim_t,
) -> Result<(), HardeningError> {
    setrlimit(resource, soft, hard).map_err(|errno| HardeningError::SetLimit {
        resource: name,
        soft: bytes_or_unlimited(soft),
        hard: bytes_or_unlimited(hard),
        errno,
    })
}

// `rlim_t` is narrower than u64 on some 32-bit targets, where the conversion is
// not a no-op.
#[allow(clippy::useless_conversion)]
fn bytes_or_unlimited(limit: rlim_t) -> Option<u64> {
    (limit != RLIM_INFINITY).then(|| u64::from(limit))
}

/// Formats a limit for a log line.
struct Bytes(Option<u64>);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "{bytes} bytes"),
            None => f.write_str("unlimited"),
        }
    }
}
