//! `SecretBuffer` holds its bytes in locked pages marked `MADV_DONTDUMP`,
//! wiped on demand and on drop, and left out of forked children
//! (`MADV_DONTFORK`) (docs/design.md, "Secret memory").
//!
//! Every test reads the kernel's view (`/proc`, signals), not the buffer's.
//! What both backends share runs on each (`common::memory_backends`); what is
//! particular to secret memory is in `secretmem.rs`.

mod common;

use common::{
    maps_overlapping, memory_backends, page_size, pipe_holding, read_own_memory, run_in_child,
    smaps, smaps_entry_at, status_kb, RunAs,
};
use goodnight::{Backend, LockPolicy, MemoryBackend, SecretBuffer};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use std::os::fd::AsFd;

const CANARY: &[u8] = b"canary-7f3a9c-not-a-real-secret";

fn data_start(buffer: &SecretBuffer) -> usize {
    buffer.expose().as_ptr() as usize
}

fn buffer(capacity: usize, backend: MemoryBackend) -> SecretBuffer {
    SecretBuffer::with_backend(capacity, LockPolicy::Required, backend)
        .unwrap_or_else(|e| panic!("{backend} buffer: {e}"))
}

#[test]
fn locked_backend_data_pages_are_private_fully_locked_and_marked_dontdump_and_dontfork_in_smaps() {
    let buffer = buffer(3 * page_size(), MemoryBackend::Locked);
    assert_eq!(buffer.backend(), Backend::Locked);

    let entry = smaps_entry_at(None, data_start(&buffer));

    assert_eq!(entry.perms, "rw-p");
    assert_eq!(entry.size_kb * 1024, buffer.data_pages_len() as u64);
    assert_eq!(
        entry.locked_kb, entry.size_kb,
        "every data page pinned: {entry:?}"
    );
    for flag in ["lo", "dd", "dc"] {
        assert!(
            entry.vm_flags.iter().any(|f| f == flag),
            "VmFlags lacks {flag}: {entry:?}"
        );
    }
}

#[test]
fn guard_pages_without_any_access_surround_the_data_pages() {
    for backend in memory_backends("guard_pages_without_any_access_surround_the_data_pages") {
        let buffer = buffer(100, backend);
        let start = data_start(&buffer);
        let end = start + buffer.data_pages_len();
        let entries = smaps(None);
        let covering = |addr: usize| {
            entries
                .iter()
                .find(|entry| entry.start <= addr && addr < entry.end)
                .unwrap_or_else(|| panic!("{backend}: nothing mapped at {addr:#x}"))
        };

        assert_eq!(covering(start - 1).perms, "---p", "{backend}");
        assert_eq!(covering(start - page_size()).perms, "---p", "{backend}");
        assert_eq!(covering(end).perms, "---p", "{backend}");
        assert_eq!(covering(end + page_size() - 1).perms, "---p", "{backend}");
    }
}

// In a child: a single-threaded process whose VmLck no other test can move
// (memory locks are not inherited across fork). Secret memory is locked by
// the kernel and counted in VmLck just the same.
#[test]
fn vmlck_grows_by_the_data_pages_on_creation_and_shrinks_back_on_drop() {
    for backend in
        memory_backends("vmlck_grows_by_the_data_pages_on_creation_and_shrinks_back_on_drop")
    {
        let (report, status) = run_in_child(RunAs::Caller, move || {
            let before = status_kb("VmLck");
            let buffer = buffer(64 * 1024, backend);
            let while_held = status_kb("VmLck");
            drop(buffer);
            let after = status_kb("VmLck");
            format!("{before} {while_held} {after}")
        });

        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "{backend}: {status:?}"
        );
        assert_eq!(
            report, "0 64 0",
            "{backend}: VmLck in kB: before, while held, after drop"
        );
    }
}

// Secret memory cannot be read through /proc/self/mem: secretmem.rs wipes it
// and reads it back through the mapping instead.
#[test]
fn locked_backend_wipe_zeroes_every_byte_of_the_data_pages_as_seen_through_proc_self_mem() {
    let mut buffer = buffer(100, MemoryBackend::Locked);
    buffer
        .read_from(pipe_holding(CANARY).as_fd())
        .expect("fill with the canary");
    let start = data_start(&buffer);
    let len = buffer.data_pages_len();
    assert_eq!(
        &read_own_memory(start, CANARY.len()),
        CANARY,
        "canary in memory"
    );

    buffer.wipe();

    assert!(buffer.is_empty());
    let memory = read_own_memory(start, len);
    assert!(
        memory.iter().all(|&byte| byte == 0),
        "non-zero bytes remain at offsets {:?}",
        memory
            .iter()
            .enumerate()
            .filter(|(_, &b)| b != 0)
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    );
}

// In a child: no other test thread can map something into the freed range.
#[test]
fn drop_unmaps_the_data_and_both_guard_pages() {
    for backend in memory_backends("drop_unmaps_the_data_and_both_guard_pages") {
        let (report, status) = run_in_child(RunAs::Caller, move || {
            let page = page_size();
            let buffer = buffer(2 * page, backend);
            let from = data_start(&buffer) - page;
            let to = data_start(&buffer) + buffer.data_pages_len() + page;
            let read_maps = || std::fs::read_to_string("/proc/self/maps").expect("read maps");
            let alive = maps_overlapping(&read_maps(), from, to).len();
            drop(buffer);
            let dropped = maps_overlapping(&read_maps(), from, to);
            format!("alive: {alive} mappings, after drop: {dropped:?}")
        });

        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "{backend}: {status:?}"
        );
        assert_eq!(report, "alive: 3 mappings, after drop: []", "{backend}");
    }
}

/// A child creates its own buffer (a forked child never has the parent's, see
/// `MADV_DONTFORK`) and then reads one byte at `offset` from the data start.
fn read_byte_in_child(
    backend: MemoryBackend,
    capacity: usize,
    offset: isize,
) -> (String, WaitStatus) {
    run_in_child(RunAs::Caller, move || {
        let buffer = buffer(capacity, backend);
        let target = buffer.expose().as_ptr().wrapping_offset(offset);
        // SAFETY: `target` is either inside the data pages or inside a guard
        // page; neither is part of a Rust allocation, so a volatile read there
        // is a plain hardware load: it returns a byte or raises SIGSEGV, which
        // is the outcome under test. The child exists only for this.
        let byte = unsafe { target.read_volatile() };
        format!("read {byte}")
    })
}

fn assert_killed_by_sigsegv(backend: MemoryBackend, status: WaitStatus, report: &str) {
    assert!(
        matches!(status, WaitStatus::Signaled(_, Signal::SIGSEGV, _)),
        "{backend}: expected death by SIGSEGV, got {status:?} (report {report:?})"
    );
}

#[test]
fn reading_the_last_byte_of_the_capacity_in_a_child_succeeds() {
    for backend in memory_backends("reading_the_last_byte_of_the_capacity_in_a_child_succeeds") {
        let capacity = page_size();

        let (report, status) = read_byte_in_child(backend, capacity, capacity as isize - 1);

        assert_eq!(report, "read 0", "{backend}");
        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "{backend}: {status:?}"
        );
    }
}

#[test]
fn touching_one_byte_past_the_capacity_kills_the_child_with_sigsegv() {
    for backend in
        memory_backends("touching_one_byte_past_the_capacity_kills_the_child_with_sigsegv")
    {
        let capacity = page_size();

        let (report, status) = read_byte_in_child(backend, capacity, capacity as isize);

        assert_killed_by_sigsegv(backend, status, &report);
    }
}

#[test]
fn touching_one_byte_before_the_start_kills_the_child_with_sigsegv() {
    for backend in
        memory_backends("touching_one_byte_before_the_start_kills_the_child_with_sigsegv")
    {
        let (report, status) = read_byte_in_child(backend, page_size(), -1);

        assert_killed_by_sigsegv(backend, status, &report);
    }
}

#[test]
fn a_forked_child_does_not_inherit_the_data_pages_but_does_inherit_ordinary_memory() {
    for backend in memory_backends(
        "a_forked_child_does_not_inherit_the_data_pages_but_does_inherit_ordinary_memory",
    ) {
        let mut buffer = buffer(4096, backend);
        buffer
            .read_from(pipe_holding(CANARY).as_fd())
            .expect("fill with the canary");
        let secret = (
            data_start(&buffer),
            data_start(&buffer) + buffer.data_pages_len(),
        );
        let ordinary = vec![1u8; 1 << 20];
        let ordinary = (
            ordinary.as_ptr() as usize,
            ordinary.as_ptr() as usize + ordinary.len(),
        );

        let (report, status) = run_in_child(RunAs::Caller, move || {
            let maps = std::fs::read_to_string("/proc/self/maps").expect("read maps");
            format!(
                "secret mapped: {}, ordinary mapped: {}",
                !maps_overlapping(&maps, secret.0, secret.1).is_empty(),
                !maps_overlapping(&maps, ordinary.0, ordinary.1).is_empty(),
            )
        });

        assert!(
            matches!(status, WaitStatus::Exited(_, 0)),
            "{backend}: {status:?}"
        );
        assert_eq!(
            report, "secret mapped: false, ordinary mapped: true",
            "{backend}"
        );
        assert_eq!(
            buffer.expose(),
            CANARY,
            "{backend}: the parent keeps its secret"
        );
    }
}
