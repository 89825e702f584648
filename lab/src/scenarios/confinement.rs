//! Row **confinement** — "the seccomp filter is live and kills" (its "what is
//! claimed" in docs/threat-model.md).
//!
//! The scenario: the live KillProcess filter: `Seccomp: 2` in the daemon's
//! status; the observer rewrites a syscall of the live daemon at
//! syscall-entry (Linux re-checks seccomp after ptrace) to `execve`,
//! `openat`, `connect`, `ptrace`, `socket` → the daemon dies by `SIGSYS` each
//! time (audit record type 1326 where available).
//!
//! The row's last clause, "the whole integration suite passes against a
//! `--features seccomp` build with no `SIGSYS`", is `cargo xtask ci`'s
//! seccomp step on this machine (every daemon the suite starts asserts it did
//! not die by SIGSYS), and in the VM legs a check of this row that runs the
//! daemon's part of the suite, built for the VM's architecture, inside it.

use anyhow::{Context, Result};

use crate::env::{Env, Lab, Launched, PATIENCE};
use crate::runner::{Recorder, Verdict};
use crate::stand_in::hold_probe;

/// A test binary under TCG is many times slower than on this machine.
const SUITE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);

/// SIGSYS: the filter's KillProcess.
const SIGSYS: i32 = 31;

/// The syscalls the daemon must never make once sealed.
const DENIED: &[&str] = &["execve", "openat", "connect", "ptrace", "socket"];

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab
        .env("confinement")
        .cap_add("SYS_PTRACE")
        .unconfined()
        .start()?;
    rec.check(
        "with no seccomp profile around it, a process that is not the daemon has Seccomp: 0",
        |v| {
            let control = env.launch("lab", "control", None, &["/bin/sleep", "600"])?;
            let threads = env.observe(&["seccomp", &control.pid.to_string()])?;
            let modes: Vec<(i64, String)> =
                serde_json::from_value(threads["threads"].clone()).unwrap_or_default();
            v.require(
                !modes.is_empty() && modes.iter().all(|(_, mode)| mode == "0"),
                format!("a sleep beside the daemons (tid, mode): {modes:?}, so a daemon's 2 is its own filter"),
            );
            v.figure("Seccomp: 0");
            Ok(())
        },
    );
    rec.check(
        "a live daemon made to call getpid, which its filter allows, lives on and answers",
        |v| {
            let daemon = env.daemon().named("allowed").start()?;
            let found = env.observe(&["rewrite", &daemon.pid_arg(), "getpid"])?;
            v.require(
                found["detached"] == true,
                format!(
                    "the observer rewrote syscall {} into getpid ({}) and let it go on",
                    found["rewrote"], found["nr"]
                ),
            );
            let status = daemon.dazai(&env, &["status", "--json"])?;
            v.require(
                status.code == Some(0) && daemon.process.ending().is_none(),
                format!(
                    "afterwards `dazai status` exits {:?} and the daemon lives: {}",
                    status.code,
                    daemon
                        .process
                        .ending()
                        .map_or("alive".to_owned(), |e| e.how)
                ),
            );
            v.figure("alive");
            Ok(())
        },
    );
    for syscall in DENIED {
        rec.check(
            &format!("a live daemon made to call {syscall} dies by SIGSYS"),
            |v| {
                let daemon = env.daemon().named(&format!("deny-{syscall}")).start()?;
                let ready = daemon.ready_line();
                v.require(ready.contains("seccomp=on"), format!("ready line: {ready}"));
                dies_by_sigsys(&env, &daemon.process, syscall, v)
            },
        );
    }
    rec.control(
        "a holder with no filter (`lab-probe hold`, as an unsealed build): the same rewrite into execve",
        "the observer rewrote syscall",
        |v| {
            let (unsealed, _) = hold_probe(&env, "unsealed", &[])?;
            dies_by_sigsys(&env, &unsealed, "execve", v)
        },
    );
    if lab.in_vm() {
        rec.check(
            "the daemon's integration suite passes against the live filter",
            |v| integration_suite(lab, &env, v),
        );
    }
    Ok(())
}

/// `process` has its filter on every thread, and the observer's rewrite of
/// its next system call into `syscall` kills it by SIGSYS.
fn dies_by_sigsys(env: &Env, process: &Launched, syscall: &str, v: &mut Verdict) -> Result<()> {
    let pid = process.pid.to_string();
    let threads = env.observe(&["seccomp", &pid])?;
    let modes: Vec<(i64, String)> =
        serde_json::from_value(threads["threads"].clone()).unwrap_or_default();
    v.require(
        !modes.is_empty() && modes.iter().all(|(_, mode)| mode == "2"),
        format!("Seccomp: of every thread (tid, mode): {modes:?}"),
    );
    let audit_before = audit_records(env, syscall_nr(syscall, env)?);
    let found = env.observe(&["deny", &pid, syscall])?;
    v.require(
        found["signal"].as_i64() == Some(i64::from(SIGSYS)),
        format!(
            "the observer rewrote syscall {} into {syscall} ({}); pid {pid} was {}",
            found["rewrote"], found["nr"], found["end"]
        ),
    );
    let ending = process.wait_end(PATIENCE)?;
    v.require(
        ending.signal() == Some(SIGSYS),
        format!("its launcher saw {}", ending.how),
    );
    let audit_after = audit_records(env, found["nr"].as_u64().unwrap_or(u64::MAX));
    if audit_after > audit_before {
        v.note(format!(
            "kernel log: {} new audit type=1326 record(s) for syscall {}",
            audit_after - audit_before,
            found["nr"]
        ));
    } else {
        v.note("kernel log: no audit type=1326 record (audit not available here)");
    }
    v.figure(format!("SIGSYS ({SIGSYS})"));
    Ok(())
}

/// Runs every `e2e-*` test binary of the leg (the tests crate, built for
/// the VM's architecture) inside the VM against the shipped, sealed `dazai`.
fn integration_suite(lab: &Lab, env: &Env, v: &mut Verdict) -> Result<()> {
    let mut suites: Vec<String> = std::fs::read_dir(&lab.bin_dir)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("e2e-"))
        .collect();
    suites.sort();
    v.require(!suites.is_empty(), format!("test binaries: {suites:?}"));
    let mut passed = 0;
    for suite in &suites {
        let ran = env.exec_with_env(
            "root",
            &[&format!("/lab/bin/{suite}"), "--test-threads", "2"],
            &[
                ("CARGO_BIN_EXE_dazai", "/lab/bin/dazai"),
                ("DAZAI_E2E_SHIPPED_BINARY", "1"),
            ],
            SUITE_PATIENCE,
        )?;
        let summary = ran
            .stdout
            .lines()
            .find(|line| line.starts_with("test result:"))
            .unwrap_or("no summary")
            .to_owned();
        passed += summary
            .strip_prefix("test result: ok. ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        v.require(ran.code == Some(0), format!("{suite}: {summary}"));
        if ran.code != Some(0) {
            for line in failures(&ran.stdout) {
                v.note(line.to_owned());
            }
        }
    }
    v.figure(format!("{passed} tests pass"));
    Ok(())
}

/// The lines of a test binary's output that say what failed: each failed
/// test's name, and each panic with the first lines of its message (an
/// `assert_eq!` gives its two sides on the lines after "panicked at").
fn failures(output: &str) -> Vec<&str> {
    const MESSAGE_LINES: usize = 4;
    let mut picked = Vec::new();
    let mut message_left = 0;
    for line in output.lines() {
        if line.contains("panicked at") {
            picked.push(line);
            message_left = MESSAGE_LINES;
        } else if message_left > 0 && !line.trim().is_empty() && !line.starts_with("note:") {
            picked.push(line);
            message_left -= 1;
        } else {
            message_left = 0;
            if line.contains("FAILED") {
                picked.push(line);
            }
        }
    }
    picked
}

/// The number of `syscall` on the environment's architecture, as its
/// observer (built for it) knows it.
fn syscall_nr(syscall: &str, env: &Env) -> Result<u64> {
    let found = env.observe(&["syscall-nr", syscall])?;
    found["nr"]
        .as_u64()
        .with_context(|| format!("the observer knows no number for {syscall}: {found}"))
}

/// Seccomp audit records (type 1326) of syscall `nr` by a `dazai` in the
/// log of the kernel the environment runs on.
fn audit_records(env: &Env, nr: u64) -> usize {
    env.kernel_log()
        .lines()
        .filter(|line| {
            line.contains("type=1326")
                && line.contains("comm=\"dazai\"")
                && line.contains(&format!(" syscall={nr} "))
        })
        .count()
}
