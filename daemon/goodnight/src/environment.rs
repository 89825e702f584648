//! Taking a secret out of the process environment without leaving a copy.
//!
//! `std::env::var` would copy the value into an ordinary heap `String`, and
//! removing the variable would leave the original bytes in the environment
//! block that `/proc/PID/environ` shows. Instead the value is copied from its
//! place straight into locked pages and then zeroed where it stood.

use std::ffi::{CStr, CString};

use crate::error::SecretError;
use crate::secret_buffer::{LockPolicy, MemoryBackend, SecretBuffer};
use crate::wipe::wipe_bytes;

impl SecretBuffer {
    /// Moves the environment variable `name` into a new buffer: the value is
    /// copied into locked pages, zeroed in place and the variable removed.
    /// `Ok(None)` when it is not set (or `name` cannot be a variable name).
    /// The memory is chosen as by [`new`](Self::new) (`DAZAI_MEMORY`, else
    /// auto).
    ///
    /// Call it while the process has a single thread: no other thread may read
    /// or change the environment while the value is being moved.
    pub fn take_env_var(name: &str, policy: LockPolicy) -> Result<Option<Self>, SecretError> {
        let choice = MemoryBackend::from_env()?.unwrap_or_default();
        SecretBuffer::take_env_var_with_backend(name, policy, choice)
    }

    /// [`take_env_var`](Self::take_env_var) into the memory `choice` asks
    /// for, as [`with_backend`](Self::with_backend) describes.
    pub fn take_env_var_with_backend(
        name: &str,
        policy: LockPolicy,
        choice: MemoryBackend,
    ) -> Result<Option<Self>, SecretError> {
        let Ok(c_name) = CString::new(name) else {
            return Ok(None);
        };
        // SAFETY: `c_name` is a valid C string; the returned pointer, if not
        // null, points at the value's NUL-terminated bytes inside the
        // environment, which stay in place until the environment is changed
        // below (single-threaded, per this function's contract).
        let value = unsafe { libc::getenv(c_name.as_ptr()) };
        if value.is_null() {
            return Ok(None);
        }
        // SAFETY: getenv returned a non-null pointer to a NUL-terminated string
        // that nothing else touches while we hold it (see above); zeroing it in
        // place keeps its NUL terminator, so the environment stays well formed.
        let bytes = unsafe {
            let len = CStr::from_ptr(value).to_bytes().len();
            std::slice::from_raw_parts_mut(value.cast::<u8>(), len)
        };
        let copied = SecretBuffer::with_backend(bytes.len().max(1), policy, choice).and_then(
            |mut secret| {
                secret.append(bytes)?;
                Ok(secret)
            },
        );
        wipe_bytes(bytes);
        std::env::remove_var(name);
        copied.map(Some)
    }
}
