//! Row **reference** — "the lab's memory scans see a secret where one lies:
//! under the Python reference daemon, a Python program that takes its secret
//! through the reference's client module and copies it (`bytes(…)`, as
//! programs do) is found holding that copy in unlocked heap while it lives
//! and at its exit, after the module wiped its locked buffer; under `dazai`
//! the same program's copy is found too" (its "what is claimed" in
//! docs/threat-model.md).
//!
//! The positive control of the memory rows. Their evidence is mostly zero
//! hits in the Rust daemon; that means something only if the same observer
//! finds copies where copies are. The Python reference (`daemon/python`)
//! keeps its own copy in locked, no-dump pages (shown first: the same check
//! as the wipe row's, on the reference daemon), and so does its client
//! module; but CPython copies freely, and a program that makes a `bytes` of
//! its secret holds it in ordinary heap that nothing wipes. The copy is the
//! reference's documented limit, shown as such; a scan that does not find
//! it is red, since the scanner would then be blind, and the zero-hit rows
//! with it. The same agent under `dazai` shows the product's own documented
//! limit: the copies a program makes of a secret are its own. The negative
//! control makes the scanner blind on purpose (its needle a canary nobody
//! holds) and must turn the live check red.

use anyhow::{bail, Result};

use crate::env::{
    fresh_canary, wait_for, Daemon, DaemonBuilder, Env, Lab, Launched, PATIENCE, RUN,
};
use crate::runner::{Recorder, Verdict};
use crate::scenarios::wipe::{every_copy_is_locked, scan_at_last_call, LastCall};
use crate::vm_assets::PYTHON;

/// The reason the live check turns red: no copy outside locked memory.
const BLIND: &str = "copies outside locked, no-dump memory: 0";

/// The supervised program: a Python agent that takes the secret with the
/// client module, copies it as programs do, reports its pid in
/// `RUN/NAME.agent`, and ends with `os._exit` (no finaliser runs) once
/// `RUN/NAME.exit-now` exists.
fn agent_script(name: &str) -> String {
    format!(
        r#"import os, sys, time
sys.path.insert(0, "/lab/bin/python")
import dazai_ref
with dazai_ref.get("api") as secret:
    token = bytes(secret.view())
with open("{RUN}/{name}.agent.part", "w") as pid:
    pid.write(str(os.getpid()))
os.rename("{RUN}/{name}.agent.part", "{RUN}/{name}.agent")
while not os.path.exists("{RUN}/{name}.exit-now"):
    time.sleep(0.05)
os._exit(0)
"#
    )
}

/// Starts a daemon built by `daemon` (named `name`) supervising the agent,
/// arms it, and returns it with the agent's pid once it holds its copy.
fn start_with_agent<'env>(
    env: &'env Env,
    name: &str,
    daemon: DaemonBuilder<'env>,
) -> Result<(Daemon, Launched, i32)> {
    let daemon = daemon
        .named(name)
        .exec(&[PYTHON, "-c", &agent_script(name)])
        .start()?;
    let client = daemon.attach_client(env)?;
    let agent = wait_for("the Python agent's pid", PATIENCE, || {
        std::fs::read_to_string(env.run_dir.join(format!("{name}.agent")))
            .ok()?
            .trim()
            .parse()
            .ok()
    })?;
    Ok((daemon, client, agent))
}

/// The row's scenario, on Debian's own Python of the leg (Debian 11's 3.9
/// in its VMs, the oldest the reference runs on).
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.env("reference").cap_add("SYS_PTRACE").start()?;
    let python = python_version(&env)?;
    let (daemon, _client, agent) = start_with_agent(&env, "reference", env.daemon().reference())?;
    rec.check(
        "the Python reference daemon keeps every copy of the secret it holds in locked, no-dump memory",
        |v| {
            v.note(format!("Python {python}"));
            every_copy_is_locked(&env, daemon.pid(), &daemon.canary_file, v).map(|_| ())
        },
    );
    rec.check(
        "while alive, the scan finds the copy a Python agent made of its secret in unlocked heap",
        |v| copies_outside_locked_memory(&env, agent, &daemon.canary_file, v),
    );
    rec.control(
        "the same scan with a blind needle (a canary nobody holds)",
        BLIND,
        |v| {
            let blind = env.put("blind.canary", &fresh_canary())?;
            copies_outside_locked_memory(&env, agent, &blind, v)
        },
    );
    rec.check(
        "at the agent's exit_group, the scan still finds its copy: the client module wiped only its own",
        |v| {
            let exit_now = || {
                std::fs::write(env.run_dir.join("reference.exit-now"), "")?;
                Ok(())
            };
            let at_exit = scan_at_last_call(
                &env,
                agent,
                &daemon.canary_file,
                &[],
                LastCall::ExitGroup,
                exit_now,
                v,
            )?;
            let copies = at_exit.scan.hits.len();
            v.require(
                copies > 0,
                format!("copies outside locked, no-dump memory: {copies} at its exit_group"),
            );
            v.figure(format!("{copies} hit(s) at exit"));
            v.as_limit();
            Ok(())
        },
    );
    rec.check(
        "under dazai the same agent's copy is found too: a program's own copies are beyond any daemon (the documented limit)",
        |v| {
            let (dazai, _client, agent) = start_with_agent(&env, "dazai", env.daemon())?;
            copies_outside_locked_memory(&env, agent, &dazai.canary_file, v)
        },
    );
    Ok(())
}

/// `3.11.2`: the version of the environment's `python3`.
fn python_version(env: &Env) -> Result<String> {
    let ran = env.exec(
        "lab",
        &[
            PYTHON,
            "-c",
            "import platform; print(platform.python_version())",
        ],
    )?;
    let version = ran.stdout.trim();
    if ran.code != Some(0) || version.is_empty() {
        bail!("{PYTHON} said no version: {}", ran.stderr.trim());
    }
    Ok(version.to_owned())
}

/// Scans the live process `pid` for the canary in `canary_file` and
/// requires copies of it outside a locked, `dd` mapping.
fn copies_outside_locked_memory(
    env: &Env,
    pid: i32,
    canary_file: &str,
    v: &mut Verdict,
) -> Result<()> {
    let scan = env.scan(pid, canary_file)?;
    for hit in &scan.hits {
        v.note(format!(
            "hit at {:#x} in {}",
            hit.address,
            hit.mapping.describe()
        ));
    }
    let stray = scan
        .hits
        .iter()
        .filter(|hit| !hit.mapping.is_secret_shaped())
        .count();
    v.require(
        stray > 0,
        format!(
            "copies outside locked, no-dump memory: {stray} of {} hits (the observer read {} mappings, {} KiB, of pid {pid})",
            scan.hits.len(),
            scan.mappings_read,
            scan.bytes_read / 1024
        ),
    );
    v.figure(format!("{} hit(s), {stray} stray", scan.hits.len()));
    v.as_limit();
    Ok(())
}
