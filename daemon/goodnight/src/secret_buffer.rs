//! `SecretBuffer`: secret bytes in locked, guarded, non-dumpable, non-inherited
//! pages, held by one of two backends: `memfd_secret(2)` secret memory or a
//! locked anonymous mapping.

// A child module: choosing the backend builds the buffer and its mapping,
// whose fields stay private to this module.
mod backend;

use std::ffi::c_void;
use std::fmt;
use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{self, MRemapFlags, MapFlags, ProtFlags};
use nix::unistd::{self, Pid, SysconfVar};

pub use self::backend::{Backend, LockPolicy, MemoryBackend};
use crate::emergency::{self, Enlisted};
use crate::error::SecretError;
use crate::hardening::memlock_limit;
use crate::secretmem::{self, SecretMemUnavailable};
use crate::wipe::wipe_bytes;

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

impl SecretBuffer {
    /// A buffer for up to `capacity` bytes in the memory `DAZAI_MEMORY` asks
    /// for (`auto`, `secretmem` or `locked`; unset or empty means `auto`), as
    /// [`with_backend`](Self::with_backend) describes.
    pub fn new(capacity: usize, policy: LockPolicy) -> Result<SecretBuffer, SecretError> {
        let choice = MemoryBackend::from_env()?.unwrap_or_default();
        SecretBuffer::with_backend(capacity, policy, choice)
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

    /// Has the kernel write every data page (`getrandom(2)` into them), so
    /// that each is allocated now. A page the kernel refuses is then an error
    /// of that call (`EFAULT`), where a first write from user space would
    /// die by SIGBUS.
    fn commit_data_pages(&self) -> Result<(), Errno> {
        let mut committed = 0;
        while committed < self.data_len() {
            // SAFETY: the range is the rest of the data pages of a mapping
            // this value owns, readable and writable, with no Rust reference
            // into it yet; the kernel writes only inside it.
            let wrote = unsafe {
                libc::getrandom(
                    self.data_start().byte_add(committed).as_ptr(),
                    self.data_len() - committed,
                    0,
                )
            };
            match Errno::result(wrote) {
                Ok(bytes) => committed += bytes.unsigned_abs(),
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(errno),
            }
        }
        Ok(())
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

/// What followed once the buffer was full.
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
