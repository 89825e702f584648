//! Row **OOM** — "memory pressure does not leave secrets behind" (its "what
//! is claimed" in docs/threat-model.md).
//!
//! The scenario: a memory-limited environment (a container's cgroup, or a
//! memory cgroup inside the VM): the supervised child is OOM-killed
//! → the daemon panics by policy and wipes (a root observer scans it at its
//! final SIGKILL: 0 hits); the daemon itself killed hard (`kill -9`) → its
//! children die anyway (`PDEATHSIG`) — the documented limitation 'no wipe on
//! hard crash' shown as such.

use anyhow::Result;

use crate::env::{wait_for, Env, Lab, Launched, PATIENCE, RUN};
use crate::runner::{Recorder, Verdict};
use crate::scenarios::wipe::{locked_then_wiped, LastCall};

/// The row's scenario, in every leg: a container's memory limit, or a
/// memory cgroup of the VM.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    oom_killed_child(lab, rec)?;
    hard_crash(lab, rec)
}

fn oom_killed_child(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab
        .env("oom")
        .memory(64, 64)
        .cap_add("SYS_PTRACE")
        .start()?;
    rec.check(
        "an OOM-killed supervised child makes the daemon panic and wipe",
        |v| panics_and_wipes(&env, ProgramEnd::OomKiller, v),
    );
    rec.control(
        "the same daemon, its program killed by `kill -9` from outside instead of the OOM killer",
        "the environment's memory cgroup counted 0 new OOM kill(s)",
        |v| panics_and_wipes(&env, ProgramEnd::KilledFromOutside, v),
    );
    Ok(())
}

/// How the supervised program is made to end.
#[derive(Clone, Copy)]
enum ProgramEnd {
    /// It allocates until the OOM killer takes it.
    OomKiller,
    /// `kill -9` by its own user: the same signal, no OOM.
    KilledFromOutside,
}

/// The supervised program ends as `end` says: the daemon must panic for
/// its end and wipe (the observer at its self-SIGKILL), and the kernel must
/// have counted an OOM kill in the environment's memory cgroup.
fn panics_and_wipes(env: &Env, end: ProgramEnd, v: &mut Verdict) -> Result<()> {
    let kills_before = env.oom_kills()?;
    // The hog waits for its cue, so the observer is on the daemon before
    // the OOM killer is.
    let hog =
        format!("while [ ! -e {RUN}/hog-now ]; do sleep 0.05; done; exec /lab/bin/lab-probe hog");
    let _ = std::fs::remove_file(env.run_dir.join("hog-now"));
    let daemon = env
        .daemon()
        .named("oom")
        .args(&["--memory", "locked"])
        .exec(&["/bin/sh", "-c", &hog])
        .start()?;
    let program = descendant_running(env, daemon.pid(), "/bin/sh")?;
    let cue = || {
        match end {
            ProgramEnd::OomKiller => std::fs::write(env.run_dir.join("hog-now"), "")?,
            ProgramEnd::KilledFromOutside => {
                env.exec("lab", &["kill", "-9", &program.to_string()])?;
            }
        }
        Ok(())
    };
    locked_then_wiped(env, &daemon, LastCall::SelfKill, cue, v)?;
    let line = daemon.panic_line().unwrap_or_default();
    v.require(
        line.contains("supervised program killed by SIGKILL"),
        format!("the daemon logged: {line}"),
    );
    let kills = env.oom_kills()?.saturating_sub(kills_before);
    v.require(
        kills >= 1,
        format!("the environment's memory cgroup counted {kills} new OOM kill(s)"),
    );
    v.figure("panic on OOM kill, 0 hits at its SIGKILL");
    Ok(())
}

/// The descendant of `pid` running `program`, found through the kernel's
/// `/proc/PID/task/PID/children` and `/proc/PID/cmdline`, not the daemon's
/// word; waited for, since a shell forks and execs it only after it starts
/// (a run looked 168 ms after the launch and found none yet).
fn descendant_running(env: &Env, pid: i32, program: &str) -> Result<i64> {
    let what = format!("a descendant of pid {pid} running {program}");
    wait_for(&what, PATIENCE, || {
        find_descendant_running(env, pid, program).ok().flatten()
    })
}

/// [`descendant_running`], looked for once.
fn find_descendant_running(env: &Env, pid: i32, program: &str) -> Result<Option<i64>> {
    let mut generation = vec![i64::from(pid)];
    for _ in 0..4 {
        let mut next = Vec::new();
        for parent in &generation {
            let listed = format!("/proc/{parent}/task/{parent}/children");
            let children = env.exec("root", &["cat", &listed])?;
            next.extend(
                children
                    .stdout
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i64>().ok()),
            );
        }
        for child in &next {
            let cmdline = env.exec("root", &["cat", &format!("/proc/{child}/cmdline")])?;
            if cmdline.stdout.split('\0').next() == Some(program) {
                return Ok(Some(*child));
            }
        }
        generation = next;
    }
    Ok(None)
}

fn hard_crash(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.env("hard-crash").start()?;
    rec.check(
        "a daemon killed by SIGKILL still takes its child, but cannot wipe",
        |v| {
            let daemon = env
                .daemon()
                .named("hard-crash")
                .exec(&["/bin/sleep", "600"])
                .start()?;
            child_dies_with(&env, &daemon.process, v)?;
            v.require(
                daemon.panic_line().is_none(),
                "no PANIC line: the wipe did not run (the documented limit)",
            );
            v.as_limit();
            Ok(())
        },
    );
    rec.control(
        "a supervisor whose child does not die with it (`sh -c 'sleep 600; :'`, no PDEATHSIG)",
        "its supervised child",
        |v| {
            let script = "/bin/sleep 600; :";
            let shell = env.launch("lab", "no-pdeathsig", None, &["/bin/sh", "-c", script])?;
            child_dies_with(&env, &shell, v)
        },
    );
    Ok(())
}

/// `supervisor`, killed with `kill -9` by its own user, must die by SIGKILL
/// and take its `sleep` child with it.
fn child_dies_with(env: &Env, supervisor: &Launched, v: &mut Verdict) -> Result<()> {
    // The child's pid from the kernel, not from the supervisor's word.
    let child = descendant_running(env, supervisor.pid, "/bin/sleep")?;
    let watcher = env.launch(
        "root",
        "watch-child",
        None,
        &["/lab/bin/lab-probe", "watch-gone", &child.to_string()],
    )?;
    watcher.wait_output("watching", PATIENCE)?;
    v.require(
        supervisor.ending().is_none() && watcher.ending().is_none(),
        format!(
            "before the kill, pid {} and its child (pid {child}) are alive",
            supervisor.pid
        ),
    );
    env.exec("lab", &["kill", "-9", &supervisor.pid.to_string()])?;
    let ending = supervisor.wait_end(PATIENCE)?;
    v.require(
        ending.signal() == Some(9),
        format!("pid {} ended: {}", supervisor.pid, ending.how),
    );
    let gone_ms: Option<u128> = watcher.wait_end(v.patience()).ok().and_then(|_| {
        watcher
            .out()
            .lines()
            .find_map(|line| line.strip_prefix("gone unix_ms="))
            .and_then(|ms| ms.trim().parse().ok())
    });
    // Both times are the guest's clock (the host's may differ in a VM); the
    // child's going may be seen a moment before the launcher reaps the
    // supervisor, so this is a figure, not a test.
    let after_ms = gone_ms.map(|gone| gone as i128 - ending.unix_ms as i128);
    v.require(
        gone_ms.is_some(),
        match after_ms {
            Some(ms) => format!("its supervised child (pid {child}), alive before the kill, was gone {ms} ms after it (PDEATHSIG)"),
            None => format!("its supervised child (pid {child}) was still alive {} s after the kill", v.patience().as_secs()),
        },
    );
    v.figure(format!(
        "child gone in {} ms; no wipe",
        after_ms.unwrap_or_default()
    ));
    Ok(())
}
