//! The last resort: wiping every live [`SecretBuffer`](crate::SecretBuffer)
//! from a context that may run nothing but async-signal-safe code (a fatal
//! signal's handler, a panic hook about to abort).
//!
//! Every buffer enlists its data pages in a fixed table of atomics when it is
//! made and leaves it when it drops, after its own wipe and before its pages
//! are unmapped, so the table never names memory that is gone. No lock, no
//! allocation: a handler that interrupts either step sees the slot whole or
//! empty.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::wipe::wipe_bytes;

/// Most buffers the table holds; one made beyond it is left out of the last
/// resort (its own wipes are unchanged). The daemon holds one per `--secret`.
pub const CAPACITY: usize = 256;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    /// The process that mapped the pages: a forked child has the table but
    /// not the pages (`MADV_DONTFORK`).
    owner: AtomicI32,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    owner: AtomicI32::new(0),
};

static TABLE: [Slot; CAPACITY] = [EMPTY; CAPACITY];

/// A buffer's place in the table.
#[derive(Debug)]
pub(crate) struct Enlisted(usize);

/// Enlists `len` writable bytes at `start`; `None` when the table is full.
pub(crate) fn enlist(start: *mut u8, len: usize) -> Option<Enlisted> {
    let owner = std::process::id() as i32;
    TABLE.iter().enumerate().find_map(|(index, slot)| {
        slot.start
            .compare_exchange(0, start as usize, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| {
                slot.len.store(len, Ordering::SeqCst);
                slot.owner.store(owner, Ordering::SeqCst);
                Enlisted(index)
            })
    })
}

/// Takes a buffer out of the table, before its pages are unmapped.
pub(crate) fn discharge(enlisted: Enlisted) {
    let slot = &TABLE[enlisted.0];
    slot.owner.store(0, Ordering::SeqCst);
    slot.len.store(0, Ordering::SeqCst);
    slot.start.store(0, Ordering::SeqCst);
}

/// Wipes the data pages of every live `SecretBuffer` of this process and
/// returns how many it wiped. Async-signal-safe: atomics, `getpid(2)` and
/// volatile writes only. Whatever the interrupted code was doing with a
/// buffer, its bytes are zero afterwards.
pub fn wipe_every_secret_buffer() -> usize {
    // SAFETY: getpid takes no arguments and cannot fail.
    let this_process = unsafe { libc::getpid() };
    let mut wiped = 0;
    for slot in &TABLE {
        let start = slot.start.load(Ordering::SeqCst);
        let len = slot.len.load(Ordering::SeqCst);
        if start == 0 || len == 0 || slot.owner.load(Ordering::SeqCst) != this_process {
            continue;
        }
        // SAFETY: an enlisted slot names writable pages this process mapped
        // and still holds: a buffer leaves the table before its pages are
        // unmapped, and `owner` rules out a forked child, which lacks them.
        // Aliasing a live `&mut` of the buffer is the point: this runs only
        // on the way to the process's death, and nothing reads the bytes after.
        let bytes = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
        wipe_bytes(bytes);
        wiped += 1;
    }
    wiped
}
