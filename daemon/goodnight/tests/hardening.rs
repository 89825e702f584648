//! Process hardening (docs/design.md, "Secret memory"): `RLIMIT_MEMLOCK`
//! raised from soft to hard, with a clear error when the hard limit is too
//! small (never a silently unlocked buffer); `PR_SET_DUMPABLE 0`: no core
//! dumps, no same-UID ptrace, no `/proc/PID/mem`; a core size limit of 0 as a
//! second layer.
//!
//! Every test runs the code in a forked child as `nobody` (root's capabilities
//! would bypass the limits and permissions under test) and observes the child
//! from outside: from the parent, or from a second `nobody` process.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{memory_backends, proc_limits, run_in_child, smaps_entry_at, Child, RunAs, NOBODY};
use goodnight::{LockPolicy, MemoryBackend, SecretBuffer, SecretError};
use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

fn assert_exited_cleanly(status: WaitStatus, report: &str) {
    assert!(
        matches!(status, WaitStatus::Exited(_, 0)),
        "child ended {status:?}, report {report:?}"
    );
}

fn owner_of_status_file(pid: Pid) -> u32 {
    std::fs::metadata(format!("/proc/{pid}/status"))
        .expect("stat /proc/PID/status")
        .uid()
}

/// What a second, unrelated `nobody` process gets when it opens `/proc/PID/mem`.
fn open_proc_mem_as_nobody(pid: Pid) -> String {
    let (report, status) = run_in_child(RunAs::Nobody, move || {
        match std::fs::File::open(format!("/proc/{pid}/mem")) {
            Ok(_) => "opened".to_string(),
            Err(error) => format!("{:?}", Errno::from_raw(error.raw_os_error().unwrap_or(0))),
        }
    });
    assert_exited_cleanly(status, &report);
    report
}

fn hardened_child() -> Child {
    Child::spawn(RunAs::Nobody, || {
        let report = goodnight::forbid_core_dumps_and_tracing();
        let dumpable = nix::sys::prctl::get_dumpable();
        format!(
            "{} / PR_GET_DUMPABLE {dumpable:?}",
            report.map_or_else(|e| e.to_string(), |r| r.to_string())
        )
    })
}

fn control_child() -> Child {
    Child::spawn(RunAs::Nobody, || {
        format!("PR_GET_DUMPABLE {:?}", nix::sys::prctl::get_dumpable())
    })
}

#[test]
fn a_hardened_child_reads_not_dumpable_and_its_proc_files_become_owned_by_root() {
    let mut hardened = hardened_child();
    let mut control = control_child();

    let hardened_report = hardened.report();
    let control_report = control.report();

    assert!(
        hardened_report.ends_with("PR_GET_DUMPABLE Ok(false)"),
        "{hardened_report}"
    );
    assert_eq!(control_report, "PR_GET_DUMPABLE Ok(true)");
    assert_eq!(
        owner_of_status_file(hardened.pid()),
        0,
        "hardened: root-owned"
    );
    assert_eq!(
        owner_of_status_file(control.pid()),
        NOBODY,
        "control: nobody-owned"
    );
    assert_exited_cleanly(hardened.finish(), &hardened_report);
    assert_exited_cleanly(control.finish(), &control_report);
}

#[test]
fn another_process_of_the_same_uid_cannot_open_proc_mem_of_a_hardened_child() {
    let mut hardened = hardened_child();
    let mut control = control_child();
    let hardened_report = hardened.report();
    let control_report = control.report();

    let hardened_mem = open_proc_mem_as_nobody(hardened.pid());
    let control_mem = open_proc_mem_as_nobody(control.pid());

    assert_eq!(hardened_mem, "EACCES", "hardened child ({hardened_report})");
    assert_eq!(control_mem, "opened", "control child ({control_report})");
    assert_exited_cleanly(hardened.finish(), &hardened_report);
    assert_exited_cleanly(control.finish(), &control_report);
}

#[test]
fn limit_core_size_to_zero_sets_soft_and_hard_core_limits_to_zero_in_proc_limits() {
    let mut child = Child::spawn(RunAs::Nobody, || {
        // Start from a non-zero limit, so "0 0" can only come from the call.
        setrlimit(Resource::RLIMIT_CORE, 1 << 20, RLIM_INFINITY).expect("set a core limit");
        let report = goodnight::limit_core_size_to_zero();
        // The hard limit is gone for good: raising it back needs privilege.
        let raise_back = setrlimit(Resource::RLIMIT_CORE, 4096, 4096);
        format!("{report:?} / raise back: {raise_back:?}")
    });
    let report = child.report();

    let limits = proc_limits(Some(child.pid()), "Max core file size");

    assert_eq!(limits, ("0".to_string(), "0".to_string()), "{report}");
    assert!(report.ends_with("raise back: Err(EPERM)"), "{report}");
    assert_exited_cleanly(child.finish(), &report);
}

#[test]
fn a_memlock_limit_below_the_buffer_size_is_a_lock_refused_error_naming_the_limit_and_the_fix() {
    let (report, status) = run_in_child(RunAs::Nobody, || {
        setrlimit(Resource::RLIMIT_MEMLOCK, 4096, 4096).expect("lower RLIMIT_MEMLOCK");
        match SecretBuffer::with_backend(64 * 1024, LockPolicy::Required, MemoryBackend::Locked) {
            Ok(buffer) => format!("unexpectedly created: {buffer:?} {}", buffer.backend()),
            Err(error @ SecretError::LockRefused { .. }) => error.to_string(),
            Err(other) => format!("wrong error: {other:?}"),
        }
    });

    assert_exited_cleanly(status, &report);
    assert!(report.starts_with("cannot lock 65536 bytes"), "{report}");
    for needle in [
        "RLIMIT_MEMLOCK is 4096 bytes",
        "ulimit -l",
        "LimitMEMLOCK=",
        "CAP_IPC_LOCK",
    ] {
        assert!(
            report.contains(needle),
            "{needle:?} missing from {report:?}"
        );
    }
}

#[test]
fn the_insecure_opt_out_under_a_too_small_memlock_limit_gives_an_unlocked_buffer_with_nothing_locked_in_smaps(
) {
    let mut child = Child::spawn(RunAs::Nobody, || {
        setrlimit(Resource::RLIMIT_MEMLOCK, 4096, 4096).expect("lower RLIMIT_MEMLOCK");
        let buffer = SecretBuffer::with_backend(
            64 * 1024,
            LockPolicy::InsecureAllowUnlocked,
            MemoryBackend::Locked,
        )
        .expect("the opt-out tolerates the refusal");
        let text = format!(
            "{:#x}|{}|{}|{}",
            buffer.expose().as_ptr() as usize,
            buffer.is_locked(),
            buffer.backend(),
            buffer.is_excluded_from_dumps()
        );
        // Keep the mapping alive while the parent inspects it.
        std::mem::forget(buffer);
        text
    });
    let report = child.report();
    let mut words = report.split('|');
    let address = words
        .next()
        .and_then(|a| usize::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no address in {report:?}"));

    let entry = smaps_entry_at(Some(child.pid()), address);

    assert_eq!(
        words.collect::<Vec<_>>(),
        ["false", "UNLOCKED (insecure)", "true"],
        "{report}"
    );
    assert_eq!(entry.size_kb, 64);
    assert_eq!(entry.locked_kb, 0, "{entry:?}");
    assert!(!entry.vm_flags.iter().any(|f| f == "lo"), "{entry:?}");
    assert_exited_cleanly(child.finish(), &report);
}

// Secret memory is charged against RLIMIT_MEMLOCK too, so both backends.
#[test]
fn a_non_root_process_within_its_memlock_limit_gets_a_fully_locked_buffer() {
    for backend in
        memory_backends("a_non_root_process_within_its_memlock_limit_gets_a_fully_locked_buffer")
    {
        let mut child = Child::spawn(RunAs::Nobody, move || {
            setrlimit(Resource::RLIMIT_MEMLOCK, 128 * 1024, 128 * 1024)
                .expect("set RLIMIT_MEMLOCK");
            let buffer = SecretBuffer::with_backend(64 * 1024, LockPolicy::Required, backend)
                .expect("buffer");
            let text = format!("{:#x}", buffer.expose().as_ptr() as usize);
            std::mem::forget(buffer);
            text
        });
        let report = child.report();
        let address = usize::from_str_radix(report.trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("{backend}: no address in {report:?}"));

        let entry = smaps_entry_at(Some(child.pid()), address);

        assert_eq!(
            (entry.size_kb, entry.locked_kb),
            (64, 64),
            "{backend}: {entry:?}"
        );
        assert_exited_cleanly(child.finish(), &report);
    }
}

#[test]
fn raise_memlock_limit_lifts_the_soft_limit_to_the_hard_limit_in_proc_limits() {
    let mut child = Child::spawn(RunAs::Nobody, || {
        setrlimit(Resource::RLIMIT_MEMLOCK, 4096, 65536).expect("soft below hard");
        format!("{:?}", goodnight::raise_memlock_limit())
    });
    let report = child.report();

    let limits = proc_limits(Some(child.pid()), "Max locked memory");

    assert_eq!(
        limits,
        ("65536".to_string(), "65536".to_string()),
        "{report}"
    );
    assert_eq!(
        report,
        "Ok(MemlockReport { before: Some(4096), after: Some(65536), hard: Some(65536) })"
    );
    assert_exited_cleanly(child.finish(), &report);
}

#[test]
fn a_hard_memlock_limit_too_small_for_the_buffer_is_still_a_clear_error_after_raising() {
    let (report, status) = run_in_child(RunAs::Nobody, || {
        setrlimit(Resource::RLIMIT_MEMLOCK, 4096, 8192).expect("small hard limit");
        let raised = goodnight::raise_memlock_limit().map(|r| r.to_string());
        let created =
            SecretBuffer::with_backend(64 * 1024, LockPolicy::Required, MemoryBackend::Locked);
        format!(
            "{raised:?} / {:?}",
            created.map(|b| b.backend()).map_err(|e| e.to_string())
        )
    });

    assert_exited_cleanly(status, &report);
    assert!(
        report.contains("raised from 4096 bytes to 8192 bytes"),
        "{report}"
    );
    assert!(report.contains("RLIMIT_MEMLOCK is 8192 bytes"), "{report}");
}
