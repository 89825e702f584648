//! `goodnight`: the secure-memory library of ningen-shikkaku.
//!
//! [`SecretBuffer`] holds secret bytes in locked, guarded pages that are left
//! out of core dumps and forked children, filled by `read(2)` straight into the
//! pages and wiped with a write the compiler may not remove. The pages are
//! `memfd_secret(2)` secret memory where the kernel offers it (out of the
//! kernel's direct map: not even root reads them through `/proc/PID/mem`),
//! else a locked anonymous mapping ([`MemoryBackend`], [`Backend`]). The
//! [hardening functions](forbid_core_dumps_and_tracing) make the whole process
//! non-dumpable and able to lock memory, each returning a report to log.
//!
//! Linux is the supported platform; elsewhere the buffer fails closed
//! (`MADV_DONTFORK` is reported as refused) and the `prctl` hardening errors.

pub mod emergency;
mod environment;
mod error;
mod hardening;
pub mod pidfd;
mod secret_buffer;
mod secretmem;
mod wipe;

pub use error::SecretError;
pub use hardening::{
    forbid_core_dumps_and_tracing, is_dumpable, limit_core_size_to_zero, memlock_limit,
    raise_memlock_limit, CoreLimitReport, DumpabilityReport, HardeningError, MemlockReport,
};
pub use secret_buffer::{Backend, LineKeys, LockPolicy, MemoryBackend, SecretBuffer, Typed};
pub use secretmem::SecretMemUnavailable;
pub use wipe::wipe_bytes;
