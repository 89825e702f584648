//! System calls std does not offer in the form the daemon needs.

/// `_exit(2)`: ends a forked process without running the parent's exit
/// handlers or flushing buffers it inherited.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping destructors
    // is the point in a forked child.
    unsafe { libc::_exit(code) }
}
