//! `SecretBuffer`: secret bytes in locked, guarded, non-dumpable, non-inherited
//! pages, held by one of two backends: `memfd_secret(2)` secret memory or a
//! locked anonymous mapping.

use std::ffi::c_void;
use std::fmt;
use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::str::FromStr;

use nix::errno::Errno;
use nix::sys::mman::{self, MRemapFlags, MapFlags, ProtFlags};
use nix::unistd::{self, Pid, SysconfVar};

use crate::emergency::{self, Enlisted};
use crate::hardening::memlock_limit;
use crate::secretmem::{self, SecretMemUnavailable};
use crate::wipe::wipe_bytes;

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

/// Why a [`SecretBuffer`] could not be created or filled.
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

/// Secret bytes in their own mapping, between two guard pages:
///
/// ```text
/// [ guard page | data pages (capacity rounded up to whole pages) | guard page ]
///    PROT_NONE    READ|WRITE, locked, MADV_DONTDUMP                  PROT_NONE
/// └──────────────────────── MADV_DONTFORK ─────────────────────────────────┘
/// ```
///
/// The data pages come from one of two backends ([`backend`](Self::backend)
/// says which, [`backend_note`](Self::backend_note) why):
///
/// - [`Backend::SecretMem`]: a `memfd_secret(2)` file mapped shared. The
///   kernel takes the pages out of its direct map, so not even root reads
///   them through `/proc/PID/mem`, `ptrace` or `process_vm_readv`; they are
///   locked in RAM and left out of core dumps by the kernel itself (and
///   charged against `RLIMIT_MEMLOCK`). The descriptor is closed as soon as
///   the pages are mapped, so there is nothing for a child to inherit.
/// - [`Backend::Locked`]: an anonymous private mapping pinned with `mlock`.
///
/// With either:
/// - never written to swap, left out of core dumps (`MADV_DONTDUMP`) and out
///   of forked children (`MADV_DONTFORK`);
/// - an access just before the data or just past the data pages faults on a
///   guard page. The guard sits at page granularity: when the capacity is not
///   a multiple of the page size, the bytes between the capacity and the end
///   of the last data page are still mapped (and locked, and wiped);
/// - filled by `read(2)` straight into the pages ([`read_from`](Self::read_from),
///   [`read_line_from`](Self::read_line_from)), never through a `Vec` or `String`;
/// - wiped with [`wipe_bytes`](crate::wipe_bytes) on [`wipe`](Self::wipe), on
///   every error, and on drop, then unmapped.
///
/// A capacity of 0 is accepted and still maps one data page; such a buffer can
/// only hold the empty secret.
///
/// It is move-only: there is no `Clone`, no `Copy`, no `Deref`, and `Debug`
/// prints only the length, so the type itself never duplicates the bytes.
///
/// ```compile_fail,E0599
/// use goodnight::{LockPolicy, SecretBuffer};
/// # fn main() -> Result<(), goodnight::SecretError> {
/// let secret = SecretBuffer::new(32, LockPolicy::Required)?;
/// let copy = secret.clone(); // SecretBuffer is move-only
/// # Ok(())
/// # }
/// ```
///
/// Because of `MADV_DONTFORK`, a forked child does not have the pages: it must
/// not read the buffer (that faults). Dropping it there is harmless: drop only
/// wipes and unmaps in the process that created the buffer.
pub struct SecretBuffer {
    mapping: Mapping,
    capacity: usize,
    len: usize,
    backend: Backend,
    note: String,
    excluded_from_dumps: bool,
    /// Its place in the last-resort table ([`crate::emergency`]).
    enlisted: Option<Enlisted>,
}

// SAFETY: the buffer exclusively owns its mapping (no other handle to the pages
// exists: the secretmem descriptor is closed once mapped), and
// mapping/unmapping/locking are process-wide, not thread-bound, so moving the
// owner to another thread is sound.
unsafe impl Send for SecretBuffer {}
// SAFETY: every `&self` method only reads the pages or plain fields; all writes
// go through `&mut self`, so shared references across threads cannot race.
unsafe impl Sync for SecretBuffer {}

/// What went wrong on the way to secret memory.
enum SecretMemFailure {
    /// The kernel gives no secret memory here: [`MemoryBackend::Auto`] falls
    /// back to the locked mapping.
    Unavailable(SecretMemUnavailable),
    /// A failure that the locked mapping would meet just the same.
    Fatal(SecretError),
}

impl SecretBuffer {
    /// A buffer for up to `capacity` bytes in the memory `DAZAI_MEMORY` asks
    /// for (`auto`, `secretmem` or `locked`; unset or empty means `auto`), as
    /// [`with_backend`](Self::with_backend) describes.
    pub fn new(capacity: usize, policy: LockPolicy) -> Result<SecretBuffer, SecretError> {
        let choice = MemoryBackend::from_env()?.unwrap_or_default();
        SecretBuffer::with_backend(capacity, policy, choice)
    }

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
        // Secret memory is VM_LOCKED from mmap on, and charged against
        // RLIMIT_MEMLOCK there: there is no mlock(2) to add. (On Linux 6.18
        // mlock of such a mapping even fails, with ENOMEM: mlock populates the
        // pages through get_user_pages, which refuses secret memory.)
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
        // A secret-memory page is allocated (and taken out of the direct map)
        // at its first touch. Touch them all now, as mlock does for the locked
        // backend, so that the memory is committed at creation rather than in
        // the middle of reading a secret.
        buffer.wipe();
        Ok(buffer)
    }

    /// Appends everything `fd` yields until end of file, with `read(2)` straight
    /// into the pages, and returns the number of bytes now held.
    ///
    /// Retries `EINTR`. If the source holds more than the capacity allows, the
    /// buffer is wiped and the result is [`SecretError::TooLong`]; on a read
    /// error it is wiped too, so no partial secret survives a failure.
    pub fn read_from(&mut self, fd: BorrowedFd<'_>) -> Result<usize, SecretError> {
        loop {
            let (len, capacity) = (self.len, self.capacity);
            if len == capacity {
                return match read_one_past_capacity(fd) {
                    Ok(Next::Eof) => Ok(len),
                    Ok(Next::Newline | Next::Data) => Err(self.fail_too_long()),
                    Err(errno) => Err(self.fail_read(errno)),
                };
            }
            match read_retrying(fd, &mut self.pages_mut()[len..capacity]) {
                Ok(0) => return Ok(len),
                Ok(n) => self.len += n,
                Err(errno) => return Err(self.fail_read(errno)),
            }
        }
    }

    /// Appends bytes from `fd` up to the first `b'\n'` (consumed, not stored)
    /// or end of file, and returns the number of bytes now held.
    ///
    /// Reads one byte per `read(2)` so nothing after the newline is taken from
    /// the source (secrets are short); a terminal in canonical mode hands over
    /// a line at a time anyway. A `b'\r'` before the newline is kept. Errors
    /// and wiping as in [`read_from`](Self::read_from).
    pub fn read_line_from(&mut self, fd: BorrowedFd<'_>) -> Result<usize, SecretError> {
        loop {
            let at = self.len;
            if at == self.capacity {
                return match read_one_past_capacity(fd) {
                    Ok(Next::Eof | Next::Newline) => Ok(at),
                    Ok(Next::Data) => Err(self.fail_too_long()),
                    Err(errno) => Err(self.fail_read(errno)),
                };
            }
            match read_retrying(fd, &mut self.pages_mut()[at..=at]) {
                Ok(0) => return Ok(at),
                Ok(_) if self.pages()[at] == b'\n' => {
                    wipe_bytes(&mut self.pages_mut()[at..=at]);
                    return Ok(at);
                }
                Ok(_) => self.len += 1,
                Err(errno) => return Err(self.fail_read(errno)),
            }
        }
    }

    /// Enters the data pages in the last-resort table, now that they are
    /// writable. A full table leaves the buffer out of the last resort only:
    /// its own wipes are unchanged.
    fn enlisted(mut self) -> Self {
        self.enlisted = emergency::enlist(
            self.mapping.data_start().as_ptr().cast::<u8>(),
            self.mapping.data_len(),
        );
        self
    }

    /// Reads a line a person types on a terminal in non-canonical mode, one
    /// `read(2)` per byte straight into the pages, and applies the editing
    /// keys as the terminal would: `erase` (and DEL or backspace) drops the
    /// last byte, `kill` the whole line, each wiped where it stood; Enter, or
    /// `end_of_file` on an empty line, ends it. `interrupt` wipes everything
    /// and gives [`Typed::Cancelled`]. Errors and wiping as in
    /// [`read_from`](Self::read_from).
    pub fn read_typed_line_from(
        &mut self,
        fd: BorrowedFd<'_>,
        keys: LineKeys,
    ) -> Result<Typed, SecretError> {
        loop {
            let at = self.len;
            if at == self.capacity {
                return match read_one_past_capacity(fd) {
                    Ok(Next::Eof | Next::Newline) => Ok(Typed::Entered),
                    Ok(Next::Data) => Err(self.fail_too_long()),
                    Err(errno) => Err(self.fail_read(errno)),
                };
            }
            match read_retrying(fd, &mut self.pages_mut()[at..=at]) {
                Ok(0) => return Ok(Typed::Entered),
                Ok(_) => match keys.meaning(self.pages()[at], at == 0) {
                    Key::Enter => {
                        wipe_bytes(&mut self.pages_mut()[at..=at]);
                        return Ok(Typed::Entered);
                    }
                    Key::Interrupt => {
                        self.wipe();
                        return Ok(Typed::Cancelled);
                    }
                    Key::Erase => {
                        let from = at.saturating_sub(1);
                        wipe_bytes(&mut self.pages_mut()[from..=at]);
                        self.len = from;
                    }
                    Key::Kill => self.wipe(),
                    Key::Text => self.len += 1,
                },
                Err(errno) => return Err(self.fail_read(errno)),
            }
        }
    }

    /// The secret bytes held, as an explicit borrow.
    pub fn expose(&self) -> &[u8] {
        &self.pages()[..self.len]
    }

    /// Number of secret bytes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no secret bytes are held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most bytes this buffer accepts, as passed to [`new`](Self::new).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Size of the data pages: the capacity rounded up to whole pages (at
    /// least one). This is what is locked, excluded from dumps and wiped.
    pub fn data_pages_len(&self) -> usize {
        self.mapping.data_len()
    }

    /// Whether the data pages are pinned in RAM: by `mlock(2)` for
    /// [`Backend::Locked`], by the kernel itself for [`Backend::SecretMem`]
    /// (secret memory is never swapped; smaps shows it `lo`). Only `false`
    /// for [`Backend::Unlocked`].
    pub fn is_locked(&self) -> bool {
        self.backend != Backend::Unlocked
    }

    /// Whether the data pages are excluded from core dumps (`MADV_DONTDUMP`);
    /// only `false` under [`LockPolicy::InsecureAllowUnlocked`].
    pub fn is_excluded_from_dumps(&self) -> bool {
        self.excluded_from_dumps
    }

    /// Which kind of memory holds the secret.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why this backend holds the secret, one clause for status and logs:
    /// e.g. "chosen automatically: memfd_secret(2) is available",
    /// "secretmem unavailable: kernel booted without secretmem.enable=1", or
    /// "locked requested; secretmem not tried".
    pub fn backend_note(&self) -> &str {
        &self.note
    }

    /// Drops one trailing `b"\n"` (and a `b'\r'` right before it), wiping the
    /// removed bytes.
    pub fn trim_trailing_newline(&mut self) {
        if self.expose().last() == Some(&b'\n') {
            self.forget_last_byte();
            if self.expose().last() == Some(&b'\r') {
                self.forget_last_byte();
            }
        }
    }

    /// Zeroes all data pages (the whole capacity and the rest of its last
    /// page) with a write the compiler may not elide; the length becomes 0.
    pub fn wipe(&mut self) {
        wipe_bytes(self.pages_mut());
        self.len = 0;
    }

    /// Appends `bytes` (copied straight into the locked pages); a source longer
    /// than the capacity wipes the buffer and is [`SecretError::TooLong`].
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), SecretError> {
        let (start, end) = (self.len, self.len + bytes.len());
        if end > self.capacity {
            return Err(self.fail_too_long());
        }
        self.pages_mut()[start..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn forget_last_byte(&mut self) {
        let last = self.len - 1;
        wipe_bytes(&mut self.pages_mut()[last..=last]);
        self.len = last;
    }

    fn fail_too_long(&mut self) -> SecretError {
        self.wipe();
        SecretError::TooLong {
            capacity: self.capacity,
        }
    }

    fn fail_read(&mut self, errno: Errno) -> SecretError {
        self.wipe();
        SecretError::Read { errno }
    }

    fn pages(&self) -> &[u8] {
        // SAFETY: `new` made the data pages READ|WRITE before constructing
        // `self`, and they stay mapped until `self.mapping` drops, which
        // outlives this borrow; writes need `&mut self`, so nothing mutates them
        // while the shared slice lives.
        unsafe {
            std::slice::from_raw_parts(
                self.mapping.data_start().as_ptr().cast::<u8>(),
                self.mapping.data_len(),
            )
        }
    }

    fn pages_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `pages`, the data pages are mapped READ|WRITE for the
        // whole life of `self`, and `&mut self` makes this the only reference.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.mapping.data_start().as_ptr().cast::<u8>(),
                self.mapping.data_len(),
            )
        }
    }
}

impl fmt::Debug for SecretBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuffer({} bytes)", self.len)
    }
}

impl Drop for SecretBuffer {
    fn drop(&mut self) {
        // In a forked child the pages were never inherited (MADV_DONTFORK):
        // touching the address would fault or hit an unrelated mapping.
        if !self.mapping.is_owned_by_this_process() {
            return;
        }
        self.wipe();
        // Out of the last-resort table before `mapping` unmaps the pages.
        if let Some(enlisted) = self.enlisted.take() {
            emergency::discharge(enlisted);
        }
        // Secret memory stays locked until the munmap that follows releases
        // it (munlock does not apply to it).
        if self.backend == Backend::Locked {
            // Nothing left to do if this fails: the munmap that follows (when
            // `mapping` drops) unlocks the pages as well.
            let _ = self.mapping.unlock_data();
        }
    }
}

/// The whole mapping, guard pages included. Unmapping on drop lets every early
/// return in `SecretBuffer::with_backend` give the address space back.
struct Mapping {
    start: NonNull<c_void>,
    len: usize,
    page: usize,
    owner: Pid,
}

impl Mapping {
    /// Maps `data_len` bytes (a multiple of the page size) plus a guard page
    /// on each side, all `PROT_NONE`, excluded from forked children.
    fn reserve(capacity: usize, data_len: usize) -> Result<Mapping, SecretError> {
        let no_space = |errno| SecretError::OutOfAddressSpace {
            requested: capacity,
            errno,
        };
        let page = page_size().map_err(no_space)?;
        let len = page
            .checked_mul(2)
            .and_then(|guards| guards.checked_add(data_len))
            .and_then(NonZeroUsize::new)
            .ok_or(no_space(Errno::ENOMEM))?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing (no MAP_FIXED) cannot overlap or alter any existing memory.
        let start =
            unsafe { mman::mmap_anonymous(None, len, ProtFlags::PROT_NONE, MapFlags::MAP_PRIVATE) }
                .map_err(no_space)?;
        let mapping = Mapping {
            start,
            len: len.get(),
            page,
            owner: unistd::getpid(),
        };
        // Before the pages become usable, so no fork can ever copy them.
        mapping
            .exclude_from_fork()
            .map_err(|errno| SecretError::AdviseRefused {
                advice: "MADV_DONTFORK",
                errno,
            })?;
        Ok(mapping)
    }

    /// Puts `memfd_secret(2)` pages in place of the reserved data pages.
    ///
    /// The pages are mapped at an address of the kernel's choosing and then
    /// moved into the slot between the guard pages. Mapping them straight over
    /// the slot with `MAP_FIXED` would be one call less, but a refused
    /// `MAP_FIXED` (`EAGAIN` over `RLIMIT_MEMLOCK`, say) has already unmapped
    /// the range it was to replace (seen on Linux 6.18): the reservation would
    /// have a hole that another thread's mmap could fill, and dropping the
    /// reservation would then unmap that thread's memory. Mapped elsewhere
    /// first, every refusal leaves the reservation whole (and dropped as such).
    fn into_secret_memory(self) -> Result<Mapping, SecretMemUnavailable> {
        let data_len = self.data_len();
        let fd = secretmem::create(data_len)?;
        let pages = LooseMapping::secret_memory(&fd, data_len)?;
        // The mapping holds the memory from now on. With the descriptor
        // closed there is nothing left for a child to inherit, nor for anyone
        // to map a second time.
        drop(fd);
        // Before the pages hold anything: a shared mapping stays shared in a
        // child, so a fork in another thread in the instant since mmap would
        // give that child these pages. (The daemon creates its buffers before
        // it starts any child, and has no other thread.)
        advise(pages.start, pages.len, Advice::DontFork).map_err(|errno| {
            SecretMemUnavailable::Refused {
                call: "madvise(MADV_DONTFORK)",
                errno,
            }
        })?;
        match move_pages(&pages, self.data_start()) {
            Ok(()) => {
                // The pages now belong to the reservation, unmapped with it.
                std::mem::forget(pages);
                Ok(self)
            }
            Err(errno) => {
                // mremap unmaps the target range before moving into it, so the
                // slot may be a hole now: give up the reservation's address
                // space rather than risk unmapping a stranger's mapping later.
                std::mem::forget(self);
                Err(SecretMemUnavailable::Refused {
                    call: "mremap(2)",
                    errno,
                })
            }
        }
    }

    fn data_start(&self) -> NonNull<c_void> {
        // SAFETY: `page < len`, so start + page stays inside the mapping and
        // cannot wrap to null.
        unsafe { self.start.byte_add(self.page) }
    }

    fn data_len(&self) -> usize {
        self.len - 2 * self.page
    }

    fn is_owned_by_this_process(&self) -> bool {
        unistd::getpid() == self.owner
    }

    fn exclude_from_fork(&self) -> Result<(), Errno> {
        advise(self.start, self.len, Advice::DontFork)
    }

    fn open_data_pages(&self) -> Result<(), Errno> {
        // SAFETY: the range is the data pages of a mapping this value owns; no
        // Rust reference into it exists yet, so changing protection breaks none.
        unsafe {
            mman::mprotect(
                self.data_start(),
                self.data_len(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            )
        }
    }

    fn exclude_data_from_dumps(&self) -> Result<(), Errno> {
        advise(self.data_start(), self.data_len(), Advice::DontDump)
    }

    fn lock_data(&self) -> Result<(), Errno> {
        // SAFETY: locking only pins pages of a mapping this value owns; it
        // changes no contents or protection.
        unsafe { mman::mlock(self.data_start(), self.data_len()) }
    }

    fn unlock_data(&self) -> Result<(), Errno> {
        // SAFETY: unlocking only lets pages of a mapping this value owns be
        // swapped again; it changes no contents or protection.
        unsafe { mman::munlock(self.data_start(), self.data_len()) }
    }
}

/// Secret-memory pages mapped outside any reservation, unmapped on drop
/// unless they were moved into one.
struct LooseMapping {
    start: NonNull<c_void>,
    len: usize,
}

impl LooseMapping {
    /// Maps `len` bytes of the secret-memory file `fd`, shared (the only way
    /// the kernel maps it), readable and writable.
    fn secret_memory(
        fd: &std::os::fd::OwnedFd,
        len: usize,
    ) -> Result<LooseMapping, SecretMemUnavailable> {
        let length = NonZeroUsize::new(len).ok_or(SecretMemUnavailable::Refused {
            call: "mmap(2)",
            errno: Errno::EINVAL,
        })?;
        // SAFETY: a new mapping of a file this process just created, at an
        // address of the kernel's choosing (no MAP_FIXED): it cannot overlap or
        // alter any existing memory.
        let start = unsafe {
            mman::mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .map_err(|errno| match errno {
            // Secret memory is locked from mmap on, so mmap checks it against
            // RLIMIT_MEMLOCK (unless the caller holds CAP_IPC_LOCK).
            Errno::EAGAIN => SecretMemUnavailable::OverMemlockLimit {
                requested: len,
                soft_limit: memlock_limit().ok().and_then(|(soft, _hard)| soft),
            },
            errno => SecretMemUnavailable::Refused {
                call: "mmap(2)",
                errno,
            },
        })?;
        Ok(LooseMapping { start, len })
    }
}

impl Drop for LooseMapping {
    fn drop(&mut self) {
        // SAFETY: the range is exactly the mapping created in `secret_memory`,
        // which nothing else refers to (it was never handed out).
        let _ = unsafe { mman::munmap(self.start, self.len) };
    }
}

/// Moves `pages` onto the data slot that starts at `slot` (of the same
/// length, inside a reservation the caller owns), replacing what is there.
#[cfg(target_os = "linux")]
fn move_pages(pages: &LooseMapping, slot: NonNull<c_void>) -> Result<(), Errno> {
    // SAFETY: the source is a mapping of the caller's that nothing refers to;
    // the target is the PROT_NONE data slot of the caller's own reservation,
    // which holds nothing and which no reference points into, so replacing it
    // (MREMAP_FIXED) disturbs no other memory.
    let moved = unsafe {
        mman::mremap(
            pages.start,
            pages.len,
            pages.len,
            MRemapFlags::MREMAP_MAYMOVE | MRemapFlags::MREMAP_FIXED,
            Some(slot),
        )
    }?;
    debug_assert_eq!(moved, slot);
    Ok(())
}

/// There is no secret memory to move elsewhere (see `secretmem::create`).
#[cfg(not(target_os = "linux"))]
fn move_pages(_pages: &LooseMapping, _slot: NonNull<c_void>) -> Result<(), Errno> {
    Err(Errno::ENOSYS)
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // A forked child has no such mapping; unmapping there could remove
        // whatever the child has since mapped at that address.
        if !self.is_owned_by_this_process() {
            return;
        }
        // SAFETY: the range is exactly the mapping created in `reserve`, and the
        // only references into it (`SecretBuffer::pages{,_mut}`) borrow the
        // owning buffer, which is being dropped.
        // Nothing useful can be done if it fails; the range stays reserved.
        let _ = unsafe { mman::munmap(self.start, self.len) };
    }
}

#[derive(Clone, Copy)]
enum Advice {
    DontFork,
    DontDump,
}

#[cfg(target_os = "linux")]
fn advise(start: NonNull<c_void>, len: usize, advice: Advice) -> Result<(), Errno> {
    let advice = match advice {
        Advice::DontFork => mman::MmapAdvise::MADV_DONTFORK,
        Advice::DontDump => mman::MmapAdvise::MADV_DONTDUMP,
    };
    // SAFETY: both advices only change how fork and core dumps treat the range,
    // never its contents or protection, and the range lies in a mapping owned by
    // the caller.
    unsafe { mman::madvise(start, len, advice) }
}

/// Fails closed elsewhere: without these advices the buffer's promises do not hold.
#[cfg(not(target_os = "linux"))]
fn advise(_start: NonNull<c_void>, _len: usize, _advice: Advice) -> Result<(), Errno> {
    Err(Errno::ENOSYS)
}

/// The data pages for `capacity` bytes: rounded up to whole pages, at least one.
fn data_len_for(capacity: usize) -> Result<usize, SecretError> {
    let no_space = |errno| SecretError::OutOfAddressSpace {
        requested: capacity,
        errno,
    };
    let page = page_size().map_err(no_space)?;
    capacity
        .max(1)
        .checked_next_multiple_of(page)
        .ok_or(no_space(Errno::ENOMEM))
}

fn page_size() -> Result<usize, Errno> {
    let size = unistd::sysconf(SysconfVar::PAGE_SIZE)?.ok_or(Errno::EINVAL)?;
    usize::try_from(size)
        .ok()
        .filter(|size| size.is_power_of_two())
        .ok_or(Errno::EINVAL)
}

/// What followed once the buffer was full.
/// The keys a terminal's user edits a line with, from its `termios`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineKeys {
    /// `VINTR` (Ctrl-C): cancel.
    pub interrupt: u8,
    /// `VERASE`: drop the last byte (DEL and backspace do too).
    pub erase: u8,
    /// `VKILL` (Ctrl-U): drop the whole line.
    pub kill: u8,
    /// `VEOF` (Ctrl-D): on an empty line, end it.
    pub end_of_file: u8,
}

/// How a typed line ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Typed {
    /// Enter (or end of file): the buffer holds the line.
    Entered,
    /// The interrupt key: the buffer is wiped and empty.
    Cancelled,
}

enum Key {
    Enter,
    Interrupt,
    Erase,
    Kill,
    Text,
}

impl LineKeys {
    fn meaning(&self, byte: u8, line_is_empty: bool) -> Key {
        match byte {
            b'\n' | b'\r' => Key::Enter,
            _ if byte == self.interrupt => Key::Interrupt,
            0x7f | 0x08 => Key::Erase,
            _ if byte == self.erase => Key::Erase,
            _ if byte == self.kill => Key::Kill,
            _ if byte == self.end_of_file && line_is_empty => Key::Enter,
            _ => Key::Text,
        }
    }
}

enum Next {
    Eof,
    Newline,
    Data,
}

/// Reads the one byte that decides whether a full buffer was enough. The byte
/// has to land somewhere outside the full pages: a one-byte stack slot, wiped
/// before returning (it is either a newline or part of a rejected secret).
fn read_one_past_capacity(fd: BorrowedFd<'_>) -> Result<Next, Errno> {
    let mut byte = [0u8; 1];
    let next = match read_retrying(fd, &mut byte) {
        Ok(0) => Ok(Next::Eof),
        Ok(_) if byte == [b'\n'] => Ok(Next::Newline),
        Ok(_) => Ok(Next::Data),
        Err(errno) => Err(errno),
    };
    wipe_bytes(&mut byte);
    next
}

fn read_retrying(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            result => return result,
        }
    }
}
