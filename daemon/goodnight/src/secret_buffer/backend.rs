//! Which memory holds a secret: secret memory (`memfd_secret(2)`) or the
//! locked anonymous mapping, chosen by [`MemoryBackend`], and the note that
//! says why.

use std::fmt;
use std::str::FromStr;

use nix::errno::Errno;

use super::{data_len_for, Mapping, SecretBuffer};
use crate::error::SecretError;
use crate::hardening::memlock_limit;
use crate::secretmem::SecretMemUnavailable;

/// What [`SecretBuffer::new`] does when the kernel refuses to lock the pages
/// in RAM (or to exclude them from core dumps).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockPolicy {
    /// Refusal is an error: the secret must never reach swap or a core dump.
    Required,
    /// Refusal is tolerated: the buffer works unlocked and reports
    /// [`Backend::Unlocked`]. Only for an explicit, loudly named user opt-out
    /// (`--insecure-allow-unlocked`), which must then show up in status and logs.
    InsecureAllowUnlocked,
}

/// Which memory a new [`SecretBuffer`] is asked to use (`DAZAI_MEMORY`,
/// `dazai daemon --memory`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryBackend {
    /// Secret memory when the kernel offers it, else the locked anonymous
    /// mapping; the buffer records why ([`SecretBuffer::backend_note`]).
    #[default]
    Auto,
    /// Secret memory (`memfd_secret(2)`) or an error with cause and fix: never
    /// a silent fallback.
    SecretMem,
    /// The locked anonymous mapping; secret memory is not tried.
    Locked,
}

impl MemoryBackend {
    /// The environment variable [`SecretBuffer::new`] takes the choice from.
    pub const ENV_VAR: &'static str = "DAZAI_MEMORY";

    /// The choice named by `DAZAI_MEMORY`: `Ok(None)` when it is unset or
    /// empty, [`SecretError::UnknownMemoryBackend`] when it names no backend.
    pub fn from_env() -> Result<Option<MemoryBackend>, SecretError> {
        match std::env::var_os(Self::ENV_VAR) {
            None => Ok(None),
            Some(value) if value.is_empty() => Ok(None),
            Some(value) => value.to_string_lossy().parse().map(Some),
        }
    }
}

impl FromStr for MemoryBackend {
    type Err = SecretError;

    /// `auto`, `secretmem` or `locked`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(MemoryBackend::Auto),
            "secretmem" => Ok(MemoryBackend::SecretMem),
            "locked" => Ok(MemoryBackend::Locked),
            other => Err(SecretError::UnknownMemoryBackend {
                value: other.to_owned(),
            }),
        }
    }
}

impl fmt::Display for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryBackend::Auto => "auto",
            MemoryBackend::SecretMem => "secretmem",
            MemoryBackend::Locked => "locked",
        })
    }
}

/// Which kind of memory holds the secret; always reported to the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `memfd_secret(2)` pages: removed from the kernel's direct map (not even
    /// root reads them through `/proc/PID/mem`, `ptrace` or
    /// `process_vm_readv`), locked in RAM by the kernel itself.
    SecretMem,
    /// Anonymous private mapping pinned in RAM with `mlock(2)`.
    Locked,
    /// Anonymous private mapping that could not be locked: the kernel may
    /// write it to swap. Only reachable through [`LockPolicy::InsecureAllowUnlocked`].
    Unlocked,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::SecretMem => "secretmem",
            Backend::Locked => "locked",
            Backend::Unlocked => "UNLOCKED (insecure)",
        })
    }
}

/// What went wrong on the way to secret memory.
enum SecretMemFailure {
    /// The kernel gives no secret memory here: [`MemoryBackend::Auto`] falls
    /// back to the locked mapping.
    Unavailable(SecretMemUnavailable),
    /// A failure that the locked mapping would meet just the same.
    Fatal(SecretError),
}

impl SecretBuffer {
    /// Maps, guards, advises and locks a buffer for up to `capacity` bytes in
    /// the memory `choice` asks for.
    ///
    /// - [`MemoryBackend::Auto`] tries secret memory and falls back to the
    ///   locked mapping when the kernel gives none; [`backend_note`](Self::backend_note)
    ///   says why (e.g. "secretmem unavailable: kernel booted without secretmem.enable=1").
    /// - [`MemoryBackend::SecretMem`] without secret memory is
    ///   [`SecretError::SecretMemUnavailable`] (cause and fix), or
    ///   [`SecretError::LockRefused`] when the pages do not fit under
    ///   `RLIMIT_MEMLOCK`.
    /// - [`MemoryBackend::Locked`] does not try secret memory.
    ///
    /// For the locked mapping, with [`LockPolicy::Required`] a refused `mlock`
    /// is [`SecretError::LockRefused`] (naming the current `RLIMIT_MEMLOCK`)
    /// and a refused `MADV_DONTDUMP` is [`SecretError::AdviseRefused`]; with
    /// [`LockPolicy::InsecureAllowUnlocked`] both are tolerated and reported by
    /// [`backend`](Self::backend) and [`is_excluded_from_dumps`](Self::is_excluded_from_dumps).
    /// Secret memory cannot be unlocked, so the policy changes nothing for it.
    /// A refused `MADV_DONTFORK` is always an error.
    pub fn with_backend(
        capacity: usize,
        policy: LockPolicy,
        choice: MemoryBackend,
    ) -> Result<SecretBuffer, SecretError> {
        let data_len = data_len_for(capacity)?;
        match choice {
            MemoryBackend::Locked => SecretBuffer::in_anonymous_mapping(
                capacity,
                data_len,
                policy,
                "locked requested; secretmem not tried".to_owned(),
            ),
            MemoryBackend::SecretMem => SecretBuffer::in_secret_memory(
                capacity,
                data_len,
                "secretmem requested",
            )
            .map_err(|failure| match failure {
                SecretMemFailure::Unavailable(SecretMemUnavailable::OverMemlockLimit {
                    requested,
                    soft_limit,
                }) => SecretError::LockRefused {
                    requested,
                    soft_limit,
                    errno: Errno::EAGAIN,
                },
                SecretMemFailure::Unavailable(SecretMemUnavailable::FirstTouchRefused {
                    requested,
                    soft_limit,
                    errno,
                }) => SecretError::LockRefused {
                    requested,
                    soft_limit,
                    errno,
                },
                SecretMemFailure::Unavailable(why) => SecretError::SecretMemUnavailable(why),
                SecretMemFailure::Fatal(error) => error,
            }),
            MemoryBackend::Auto => match SecretBuffer::in_secret_memory(
                capacity,
                data_len,
                "chosen automatically: memfd_secret(2) is available",
            ) {
                Ok(buffer) => Ok(buffer),
                Err(SecretMemFailure::Unavailable(why)) => SecretBuffer::in_anonymous_mapping(
                    capacity,
                    data_len,
                    policy,
                    format!("secretmem unavailable: {why}"),
                ),
                Err(SecretMemFailure::Fatal(error)) => Err(error),
            },
        }
    }

    /// The locked backend (or, under the insecure opt-out, the unlocked one).
    fn in_anonymous_mapping(
        capacity: usize,
        data_len: usize,
        policy: LockPolicy,
        note: String,
    ) -> Result<SecretBuffer, SecretError> {
        let mapping = Mapping::reserve(capacity, data_len)?;
        mapping
            .open_data_pages()
            .map_err(|errno| SecretError::OutOfAddressSpace {
                requested: capacity,
                errno,
            })?;
        let excluded_from_dumps = match mapping.exclude_data_from_dumps() {
            Ok(()) => true,
            Err(_) if policy == LockPolicy::InsecureAllowUnlocked => false,
            Err(errno) => {
                return Err(SecretError::AdviseRefused {
                    advice: "MADV_DONTDUMP",
                    errno,
                })
            }
        };
        let (backend, note) = match mapping.lock_data() {
            Ok(()) => (Backend::Locked, note),
            Err(errno) if policy == LockPolicy::InsecureAllowUnlocked => (
                Backend::Unlocked,
                format!(
                    "{note}; mlock(2) refused ({errno:?}): UNLOCKED under the insecure opt-out"
                ),
            ),
            Err(errno) => {
                return Err(SecretError::LockRefused {
                    requested: data_len,
                    soft_limit: memlock_limit().ok().and_then(|(soft, _hard)| soft),
                    errno,
                })
            }
        };
        Ok(SecretBuffer {
            mapping,
            capacity,
            len: 0,
            backend,
            note,
            excluded_from_dumps,
            enlisted: None,
        }
        .enlisted())
    }

    /// The secretmem backend.
    fn in_secret_memory(
        capacity: usize,
        data_len: usize,
        note: &str,
    ) -> Result<SecretBuffer, SecretMemFailure> {
        let mapping = Mapping::reserve(capacity, data_len).map_err(SecretMemFailure::Fatal)?;
        let mapping = mapping
            .into_secret_memory()
            .map_err(SecretMemFailure::Unavailable)?;
        // The kernel marks secret memory VM_DONTDUMP itself when it is mapped
        // (smaps shows `dd` either way), and a core dump could not read the
        // pages anyway: they are not in the direct map. The advice only
        // restates that, so a kernel that rejects it for this kind of mapping
        // (EINVAL) takes nothing away.
        match mapping.exclude_data_from_dumps() {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(errno) => {
                return Err(SecretMemFailure::Unavailable(
                    SecretMemUnavailable::Refused {
                        call: "madvise(MADV_DONTDUMP)",
                        errno,
                    },
                ))
            }
        }
        // Secret memory is locked by the kernel itself: there is no mlock(2)
        // to add. (On Linux 6.18 mlock of such a mapping even fails, with
        // ENOMEM: mlock populates the pages through get_user_pages, which
        // refuses secret memory.) Kernels charge it against RLIMIT_MEMLOCK at
        // different moments: 6.18 at mmap (EAGAIN, in `into_secret_memory`),
        // Debian's 6.1 and 6.12 when a page is first touched, where a touch from user
        // space over the limit dies by SIGBUS. So the kernel commits every
        // page now, at creation, and its refusal is an error to report.
        mapping.commit_data_pages().map_err(|errno| {
            SecretMemFailure::Unavailable(SecretMemUnavailable::FirstTouchRefused {
                requested: data_len,
                soft_limit: memlock_limit().ok().and_then(|(soft, _hard)| soft),
                errno,
            })
        })?;
        let mut buffer = SecretBuffer {
            mapping,
            capacity,
            len: 0,
            backend: Backend::SecretMem,
            note: note.to_owned(),
            excluded_from_dumps: true,
            enlisted: None,
        }
        .enlisted();
        // The commit left the kernel's random bytes in the pages.
        buffer.wipe();
        Ok(buffer)
    }
}
