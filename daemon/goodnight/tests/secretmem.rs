//! Two backends behind the one type (docs/design.md, "Secret memory"):
//! `memfd_secret(2)` pages (Linux >= 5.14 with secret memory enabled: out of
//! the kernel's direct map, so not even root reads them through
//! `/proc/PID/mem` or `ptrace`) where available, the locked anonymous mapping
//! otherwise; the backend in use is always reported, and both are left out of
//! forked children (`MADV_DONTFORK`).
//!
//! What both backends share (guard pages, VmLck, drop, fork) is run on each
//! in `memory.rs`; this file holds what is particular to secret memory. Every
//! test that needs secret memory (or root) fails in CI without it, and is
//! skipped elsewhere with the reason printed (`common::prerequisite`).

mod common;

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use common::{
    maps_overlapping, page_size, pipe_holding, prerequisite, read_through_the_mapping, root,
    run_in_child, secret_memory, smaps_entry_at, Child, RunAs,
};
use goodnight::{Backend, LockPolicy, MemoryBackend, SecretBuffer, SecretError};
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

const CANARY: &[u8] = b"canary-9d41e7-not-a-real-secret";

fn buffer(capacity: usize, backend: MemoryBackend) -> SecretBuffer {
    SecretBuffer::with_backend(capacity, LockPolicy::Required, backend)
        .unwrap_or_else(|e| panic!("{backend} buffer: {e}"))
}

fn data_start(buffer: &SecretBuffer) -> usize {
    buffer.expose().as_ptr() as usize
}

fn assert_exited_cleanly(status: WaitStatus, report: &str) {
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "child ended {status:?}, report {report:?}"
    );
}

#[test]
fn auto_holds_the_secret_in_secret_memory_where_the_kernel_offers_it_and_says_why() {
    let test = "auto_holds_the_secret_in_secret_memory_where_the_kernel_offers_it_and_says_why";
    if !prerequisite(test, secret_memory()) {
        return;
    }

    let buffer = buffer(64, MemoryBackend::Auto);

    assert_eq!(buffer.backend(), Backend::SecretMem);
    assert_eq!(buffer.backend().to_string(), "secretmem");
    assert_eq!(
        buffer.backend_note(),
        "chosen automatically: memfd_secret(2) is available"
    );
    assert!(buffer.is_locked() && buffer.is_excluded_from_dumps());
}

// What smaps shows for secret memory on Linux 6.18: a shared mapping of
// `/secretmem (deleted)`, VmFlags `rd wr sh mr mw ms lo dc dd` — `lo` and `dd`
// set by the kernel itself, `dc` by MADV_DONTFORK — and `Locked` equal to the
// resident size (all of it, since the pages are touched at creation).
#[test]
fn secretmem_data_pages_are_a_shared_secretmem_mapping_locked_dontdump_and_dontfork_in_smaps() {
    let test =
        "secretmem_data_pages_are_a_shared_secretmem_mapping_locked_dontdump_and_dontfork_in_smaps";
    if !prerequisite(test, secret_memory()) {
        return;
    }
    let buffer = buffer(3 * page_size(), MemoryBackend::SecretMem);

    let entry = smaps_entry_at(None, data_start(&buffer));

    assert_eq!(entry.perms, "rw-s", "{entry:?}");
    assert_eq!(entry.path, "/secretmem (deleted)", "{entry:?}");
    assert_eq!(entry.size_kb * 1024, buffer.data_pages_len() as u64);
    assert_eq!(
        entry.locked_kb, entry.size_kb,
        "every data page resident and locked: {entry:?}"
    );
    for flag in ["sh", "lo", "dd", "dc"] {
        assert!(
            entry.vm_flags.iter().any(|f| f == flag),
            "VmFlags lacks {flag}: {entry:?}"
        );
    }
    assert!(
        buffer.is_locked(),
        "reported locked like the kernel shows it"
    );
}

/// What root gets from three ways of reading another process's memory at
/// `addr`: `/proc/PID/mem`, `process_vm_readv` and `PTRACE_PEEKDATA`.
fn read_as_root(pid: Pid, addr: usize) -> [Result<Vec<u8>, Errno>; 3] {
    let len = CANARY.len();
    let proc_mem = File::open(format!("/proc/{pid}/mem"))
        .and_then(|mem| {
            let mut bytes = vec![0; len];
            mem.read_exact_at(&mut bytes, addr as u64).map(|()| bytes)
        })
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    let vm_readv = {
        let mut bytes = vec![0; len];
        process_vm_readv(
            pid,
            &mut [IoSliceMut::new(&mut bytes)],
            &[RemoteIoVec { base: addr, len }],
        )
        .map(|n| bytes[..n].to_vec())
    };
    let peek = ptrace::attach(pid).and_then(|()| {
        waitpid(pid, None)?;
        let word = ptrace::read(pid, addr as ptrace::AddressType);
        ptrace::detach(pid, None)?;
        word.map(|word| word.to_ne_bytes().to_vec())
    });
    [proc_mem, vm_readv, peek]
}

/// A child holding `CANARY` in a buffer of `backend`, and the data address.
fn child_holding_the_canary(backend: MemoryBackend) -> (Child, usize) {
    let mut child = Child::spawn(RunAs::Caller, move || {
        let mut buffer = buffer(page_size(), backend);
        buffer
            .read_from(pipe_holding(CANARY).as_fd())
            .expect("fill with the canary");
        let address = data_start(&buffer);
        // Keep the pages alive while the parent reads them.
        std::mem::forget(buffer);
        format!("{address:#x}")
    });
    let report = child.report();
    let address = usize::from_str_radix(report.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("no address in {report:?}"));
    (child, address)
}

// README, "What it does not protect against": "With the `memfd_secret` backend
// even root cannot read the pages through `/proc/PID/mem`, `ptrace` or
// `process_vm_readv`". The locked backend is the control: root reads it.
#[test]
fn root_gets_eio_efault_and_eio_reading_secretmem_but_reads_the_canary_from_the_locked_backend() {
    let test = "root_gets_eio_efault_and_eio_reading_secretmem_but_reads_the_canary_from_the_locked_backend";
    if !prerequisite(test, root()) || !prerequisite(test, secret_memory()) {
        return;
    }
    let (secret, secret_at) = child_holding_the_canary(MemoryBackend::SecretMem);
    let (locked, locked_at) = child_holding_the_canary(MemoryBackend::Locked);
    assert_eq!(
        smaps_entry_at(Some(secret.pid()), secret_at).path,
        "/secretmem (deleted)",
        "the address read is the secret memory"
    );

    let [proc_mem, vm_readv, peek] = read_as_root(secret.pid(), secret_at);
    let control = read_as_root(locked.pid(), locked_at);

    assert_eq!(proc_mem, Err(Errno::EIO), "/proc/PID/mem");
    assert_eq!(vm_readv, Err(Errno::EFAULT), "process_vm_readv");
    assert_eq!(peek, Err(Errno::EIO), "PTRACE_PEEKDATA");
    let word = std::mem::size_of::<nix::libc::c_long>();
    assert_eq!(
        control,
        [
            Ok(CANARY.to_vec()),
            Ok(CANARY.to_vec()),
            Ok(CANARY[..word].to_vec())
        ],
        "root reads the locked backend (the documented limit)"
    );
    assert_exited_cleanly(secret.finish(), "secretmem child");
    assert_exited_cleanly(locked.finish(), "locked child");
}

#[test]
fn a_forked_child_has_no_mapping_at_the_secretmem_pages_or_their_guards_in_its_maps() {
    let test = "a_forked_child_has_no_mapping_at_the_secretmem_pages_or_their_guards_in_its_maps";
    if !prerequisite(test, secret_memory()) {
        return;
    }
    let mut buffer = buffer(4096, MemoryBackend::SecretMem);
    buffer
        .read_from(pipe_holding(CANARY).as_fd())
        .expect("fill with the canary");
    let from = data_start(&buffer) - page_size();
    let to = data_start(&buffer) + buffer.data_pages_len() + page_size();
    let ordinary = vec![1u8; 1 << 20];
    let ordinary_at = ordinary.as_ptr() as usize;

    let mut child = Child::spawn(RunAs::Caller, String::new);
    child.report();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", child.pid())).expect("maps");
    let own_maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");

    assert_eq!(maps_overlapping(&own_maps, from, to).len(), 3, "parent");
    assert_eq!(maps_overlapping(&maps, from, to), Vec::<String>::new());
    assert_eq!(
        maps_overlapping(&maps, ordinary_at, ordinary_at + ordinary.len()).len(),
        1,
        "ordinary memory is inherited (control)"
    );
    assert_eq!(buffer.expose(), CANARY, "the parent keeps its secret");
    assert_exited_cleanly(child.finish(), "");
}

/// Descriptors of this process that refer to a secret-memory file.
fn secretmem_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("/secretmem"))
        .count()
}

// In a child: no other test thread can be holding a descriptor mid-creation.
#[test]
fn no_descriptor_of_the_secret_memory_outlives_the_creation_of_the_buffer() {
    let test = "no_descriptor_of_the_secret_memory_outlives_the_creation_of_the_buffer";
    if !prerequisite(test, secret_memory()) {
        return;
    }

    let (report, status) = run_in_child(RunAs::Caller, || {
        let buffer = buffer(4096, MemoryBackend::SecretMem);
        let with_buffer = secretmem_descriptors();
        drop(buffer);
        // SAFETY: memfd_secret takes one integer argument and no pointers; the
        // descriptor it returns is left open on purpose for the count below
        // (the child exits right after).
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_memfd_secret, 0) };
        format!(
            "with the buffer: {with_buffer}, with an open memfd_secret descriptor {fd}: {}",
            secretmem_descriptors()
        )
    });

    assert_exited_cleanly(status, &report);
    assert!(
        report.starts_with("with the buffer: 0, with an open memfd_secret descriptor")
            && report.ends_with(": 1"),
        "{report}"
    );
}

#[test]
fn read_from_a_pipe_lands_in_secret_memory_that_proc_self_mem_cannot_read() {
    let test = "read_from_a_pipe_lands_in_secret_memory_that_proc_self_mem_cannot_read";
    if !prerequisite(test, secret_memory()) {
        return;
    }
    let mut buffer = buffer(64, MemoryBackend::SecretMem);

    let held = buffer.read_from(pipe_holding(CANARY).as_fd());
    let through_proc = File::open("/proc/self/mem")
        .and_then(|mem| mem.read_exact_at(&mut [0; 8], data_start(&buffer) as u64))
        .map_err(|e| e.raw_os_error());

    assert_eq!(held, Ok(CANARY.len()));
    assert_eq!(buffer.expose(), CANARY);
    assert_eq!(
        read_through_the_mapping(data_start(&buffer), CANARY.len()),
        CANARY
    );
    assert_eq!(through_proc, Err(Some(Errno::EIO as i32)));
}

#[test]
fn wipe_zeroes_every_byte_of_the_secretmem_pages_as_read_through_the_mapping() {
    let test = "wipe_zeroes_every_byte_of_the_secretmem_pages_as_read_through_the_mapping";
    if !prerequisite(test, secret_memory()) {
        return;
    }
    let mut buffer = buffer(100, MemoryBackend::SecretMem);
    buffer
        .read_from(pipe_holding(CANARY).as_fd())
        .expect("fill with the canary");
    let start = data_start(&buffer);
    let len = buffer.data_pages_len();
    assert_eq!(read_through_the_mapping(start, CANARY.len()), CANARY);

    buffer.wipe();

    assert!(buffer.is_empty());
    let memory = read_through_the_mapping(start, len);
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

// As `nobody`: root holds CAP_IPC_LOCK, which lifts RLIMIT_MEMLOCK.
#[test]
fn secretmem_over_the_memlock_limit_is_a_lock_refused_error_and_auto_reports_the_charge() {
    let test =
        "secretmem_over_the_memlock_limit_is_a_lock_refused_error_and_auto_reports_the_charge";
    if !prerequisite(test, secret_memory()) {
        return;
    }

    let (report, status) = run_in_child(RunAs::Nobody, || {
        setrlimit(Resource::RLIMIT_MEMLOCK, 4096, 4096).expect("lower RLIMIT_MEMLOCK");
        let explicit = match SecretBuffer::with_backend(
            64 * 1024,
            LockPolicy::Required,
            MemoryBackend::SecretMem,
        ) {
            Ok(buffer) => format!("unexpectedly created: {}", buffer.backend()),
            Err(error @ SecretError::LockRefused { .. }) => error.to_string(),
            Err(other) => format!("wrong error: {other:?}"),
        };
        let auto = SecretBuffer::with_backend(
            64 * 1024,
            LockPolicy::InsecureAllowUnlocked,
            MemoryBackend::Auto,
        )
        .map(|buffer| format!("{} / {}", buffer.backend(), buffer.backend_note()))
        .unwrap_or_else(|e| format!("refused: {e}"));
        format!("{explicit}\n{auto}")
    });

    assert_exited_cleanly(status, &report);
    let (explicit, auto) = report.split_once('\n').expect("two lines");
    assert_eq!(
        explicit,
        "cannot lock 65536 bytes of secret memory: RLIMIT_MEMLOCK is 4096 bytes (EAGAIN); \
         fix: raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd) or run with CAP_IPC_LOCK"
    );
    assert!(
        auto.starts_with(
            "UNLOCKED (insecure) / secretmem unavailable: 65536 bytes of secret memory do not \
             fit under RLIMIT_MEMLOCK (4096 bytes"
        ) && auto.ends_with("UNLOCKED under the insecure opt-out"),
        "{auto}"
    );
}

/// Makes every later `memfd_secret(2)` of this (single-threaded) process
/// fail with ENOSYS, as on a kernel without secret memory.
fn refuse_memfd_secret_with_enosys() {
    use nix::libc::{self, sock_filter, sock_fprog};
    let statement = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        // seccomp_data.nr is at offset 0.
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_memfd_secret as u32,
        },
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    nix::sys::prctl::set_no_new_privs().expect("PR_SET_NO_NEW_PRIVS");
    // SAFETY: `program` points at `filter`, both alive for the call, which
    // copies the program into the kernel; the filter only turns one syscall
    // into an error for this child process.
    let installed = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const sock_fprog,
        )
    };
    assert_eq!(installed, 0, "seccomp: {}", Errno::last());
}

// The override that simulates a kernel without secret memory: a seccomp
// filter makes memfd_secret(2) return ENOSYS, exactly what such a kernel does.
#[test]
fn on_a_kernel_without_memfd_secret_auto_falls_back_to_locked_and_says_why_and_secretmem_is_an_error(
) {
    let (report, status) = run_in_child(RunAs::Caller, || {
        refuse_memfd_secret_with_enosys();
        let auto = buffer(4096, MemoryBackend::Auto);
        let entry = smaps_entry_at(None, data_start(&auto));
        let explicit =
            SecretBuffer::with_backend(64, LockPolicy::Required, MemoryBackend::SecretMem)
                .map(|buffer| format!("unexpectedly created: {}", buffer.backend()))
                .unwrap_or_else(|e| e.to_string());
        format!(
            "{} {} {}|{}|{}",
            auto.backend(),
            entry.perms,
            entry.locked_kb == entry.size_kb,
            auto.backend_note(),
            explicit
        )
    });

    assert_exited_cleanly(status, &report);
    let fields: Vec<&str> = report.split('|').collect();
    assert_eq!(fields[0], "locked rw-p true", "{report}");
    // As root the kernel's `secretmem.enable` is readable: a kernel booted
    // with it off is named as such. Both wordings name the boot parameter.
    assert!(
        fields[1].starts_with("secretmem unavailable: ")
            && fields[1].contains("secretmem.enable=1"),
        "the fallback says why: {report}"
    );
    assert!(
        fields[2].starts_with("secretmem unavailable: ")
            && fields[2].contains("; fix: ")
            && fields[2].contains("--memory locked"),
        "an explicit secretmem is an error with cause and fix: {report}"
    );
}

#[test]
fn dazai_memory_chooses_the_backend_for_new_and_take_env_var_and_rejects_unknown_names() {
    let test =
        "dazai_memory_chooses_the_backend_for_new_and_take_env_var_and_rejects_unknown_names";
    if !prerequisite(test, secret_memory()) {
        return;
    }

    // In a child: changing the environment is only sound with a single thread.
    let (report, status) = run_in_child(RunAs::Caller, || {
        let new_with = |value: &str| {
            std::env::set_var(MemoryBackend::ENV_VAR, value);
            SecretBuffer::new(64, LockPolicy::Required)
                .map(|buffer| format!("{} ({})", buffer.backend(), buffer.backend_note()))
                .unwrap_or_else(|e| e.to_string())
        };
        let mut lines = vec![
            new_with("locked"),
            new_with("secretmem"),
            new_with(""),
            new_with("swap"),
        ];
        std::env::set_var(MemoryBackend::ENV_VAR, "locked");
        std::env::set_var("DAZAI_TEST_SECRET", "hunter2");
        let taken = SecretBuffer::take_env_var("DAZAI_TEST_SECRET", LockPolicy::Required)
            .expect("take")
            .expect("set");
        lines.push(format!("take_env_var: {}", taken.backend()));
        lines.join("\n")
    });

    assert_exited_cleanly(status, &report);
    assert_eq!(
        report,
        "locked (locked requested; secretmem not tried)\n\
         secretmem (secretmem requested)\n\
         secretmem (chosen automatically: memfd_secret(2) is available)\n\
         \"swap\" is not a memory backend (from DAZAI_MEMORY or --memory); fix: name auto, \
         secretmem or locked\n\
         take_env_var: locked"
    );
}
