//! Row **confinement** — "the live KillProcess filter: `Seccomp: 2` in the
//! daemon's status; the observer rewrites a syscall of the live daemon at
//! syscall-entry (Linux re-checks seccomp after ptrace) to `execve`,
//! `openat`, `connect`, `ptrace`, `socket` → the daemon dies by `SIGSYS`
//! each time (audit record type 1326 where available)".
//!
//! The row's last clause, "the whole integration suite passes against a
//! `--features seccomp` build with no `SIGSYS`", is `cargo xtask ci`'s
//! seccomp step (every daemon the suite starts asserts it did not die by SIGSYS).

use anyhow::Result;

use crate::env::{Lab, PATIENCE};
use crate::runner::Recorder;

/// SIGSYS: the filter's KillProcess.
const SIGSYS: i32 = 31;

/// The syscalls the daemon must never make once sealed.
const DENIED: &[&str] = &["execve", "openat", "connect", "ptrace", "socket"];

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.container("confinement").cap_add("SYS_PTRACE").start()?;
    for syscall in DENIED {
        rec.check(
            &format!("a live daemon made to call {syscall} dies by SIGSYS"),
            |v| {
                let daemon = env.daemon().named(&format!("deny-{syscall}")).start()?;
                let ready = daemon.ready_line();
                v.require(ready.contains("seccomp=on"), format!("ready line: {ready}"));
                let threads = env.observe(&["seccomp", &daemon.pid_arg()])?;
                let modes: Vec<(i64, String)> =
                    serde_json::from_value(threads["threads"].clone()).unwrap_or_default();
                v.require(
                    !modes.is_empty() && modes.iter().all(|(_, mode)| mode == "2"),
                    format!("Seccomp: of every thread (tid, mode): {modes:?}"),
                );
                let audit_before = audit_records(syscall);
                let found = env.observe(&["deny", &daemon.pid_arg(), syscall])?;
                v.require(
                    found["signal"].as_i64() == Some(i64::from(SIGSYS)),
                    format!(
                        "the observer rewrote syscall {} into {syscall} ({}); the daemon was {}",
                        found["rewrote"], found["nr"], found["end"]
                    ),
                );
                let ending = daemon.process.wait_end(PATIENCE)?;
                v.require(
                    ending.signal() == Some(SIGSYS),
                    format!("its launcher saw {}", ending.how),
                );
                let audit_after = audit_records(syscall);
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
            },
        );
    }
    Ok(())
}

/// Seccomp audit records (type 1326) in the kernel log for `syscall` by a `dazai`.
fn audit_records(syscall: &str) -> usize {
    let Some(nr) = crate::tracer::denied_syscall(syscall) else {
        return 0;
    };
    let Ok(out) = std::process::Command::new("dmesg").output() else {
        return 0;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            line.contains("type=1326")
                && line.contains("comm=\"dazai\"")
                && line.contains(&format!(" syscall={nr} "))
        })
        .count()
}
