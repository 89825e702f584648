//! The one wipe primitive: a zeroing write the optimizer may not remove.

/// Overwrites `bytes` with zeros in a way the compiler is not allowed to elide,
/// even when the memory is never read again (the usual fate of a `memset`
/// right before `free` or `munmap`).
///
/// Linux (glibc, musl) uses `explicit_bzero(3)`, macOS uses `memset_s(3)`, and
/// other targets fall back to volatile byte writes followed by a compiler fence.
pub fn wipe_bytes(bytes: &mut [u8]) {
    if bytes.is_empty() {
        return;
    }
    platform_wipe(bytes);
}

#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn platform_wipe(bytes: &mut [u8]) {
    // SAFETY: the pointer and length come from one live `&mut [u8]`, so the whole
    // range is valid for writes and nothing else aliases it during the call.
    unsafe { libc::explicit_bzero(bytes.as_mut_ptr().cast(), bytes.len()) }
}

#[cfg(any(target_os = "macos", target_os = "ios"))]
fn platform_wipe(bytes: &mut [u8]) {
    // SAFETY: the pointer and length come from one live `&mut [u8]`, so the whole
    // range is valid for writes; `smax == n` so memset_s cannot report a
    // constraint violation and its return value carries no information.
    unsafe {
        libc::memset_s(bytes.as_mut_ptr().cast(), bytes.len(), 0, bytes.len());
    }
}

#[cfg(not(any(
    all(target_os = "linux", any(target_env = "gnu", target_env = "musl")),
    target_os = "macos",
    target_os = "ios"
)))]
fn platform_wipe(bytes: &mut [u8]) {
    for byte in bytes.iter_mut() {
        // SAFETY: `byte` is a valid, exclusive reference to one byte; the volatile
        // write is what keeps the store from being optimized away.
        unsafe { std::ptr::write_volatile(byte, 0) };
    }
    // Keeps later code (e.g. munmap) from being reordered before the zeroing.
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}
