//! Row **ptrace snooping** — "a same-UID attacker cannot read the daemon's
//! memory" (its "what is claimed" in docs/threat-model.md).
//!
//! The scenario: as the daemon's own non-root UID, `PTRACE_ATTACH` → EPERM,
//! `/proc/PID/mem` → EACCES, `process_vm_readv` → EPERM; control: the same
//! on a dumpable process succeeds.

use anyhow::Result;
use serde_json::Value;

use crate::env::{Env, Lab};
use crate::runner::{Recorder, Verdict};

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    // With SYS_PTRACE in the container's set, docker's default seccomp profile
    // lets process_vm_readv through, so the kernel's own check is what answers;
    // `lab` (uid 1000) holds no capability either way.
    let env = lab.env("ptrace-snooping").cap_add("SYS_PTRACE").start()?;
    let daemon = env.daemon().start()?;
    rec.check(
        "an attacker with the daemon's own UID cannot read its memory",
        |v| refuses_snooping(&env, daemon.pid(), v),
    );
    rec.control(
        "a dumpable process of that UID (`sleep`), which every attack reads",
        "PTRACE_ATTACH as uid",
        |v| {
            let dumpable = env.launch("lab", "dumpable", None, &["/bin/sleep", "600"])?;
            refuses_snooping(&env, dumpable.pid, v)
        },
    );
    Ok(())
}

/// As `lab`, every way to read `pid`'s memory is refused.
fn refuses_snooping(env: &Env, pid: i32, v: &mut Verdict) -> Result<()> {
    let seen = snoop(env, pid)?;
    expect(v, &seen, "ptrace_attach", "EPERM", "PTRACE_ATTACH");
    expect(v, &seen, "proc_mem", "EACCES", "open /proc/PID/mem");
    expect(v, &seen, "process_vm_readv", "EPERM", "process_vm_readv");
    v.figure("EPERM/EACCES/EPERM");
    Ok(())
}

/// `lab-probe snoop PID` as `lab`, the daemon's UID.
fn snoop(env: &Env, pid: i32) -> Result<Value> {
    let ran = env.exec("lab", &["/lab/bin/lab-probe", "snoop", &pid.to_string()])?;
    crate::env::last_json(&ran.stdout)
}

fn expect(v: &mut Verdict, seen: &Value, key: &str, wanted: &str, what: &str) {
    let got = seen[key].as_str().unwrap_or("?");
    v.require(
        got == wanted,
        format!("{what} as uid {} → {got} (expected {wanted})", seen["uid"]),
    );
}
