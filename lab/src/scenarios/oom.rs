//! Row **OOM** — "memory-limited container: the supervised child is
//! OOM-killed → the daemon panics by policy and wipes; the daemon itself
//! killed hard (`kill -9`) → its children die anyway (`PDEATHSIG`) — the
//! documented limitation 'no wipe on hard crash' shown as such".

use anyhow::{Context, Result};

use crate::env::{Env, Lab, PATIENCE};
use crate::runner::Recorder;

/// The row's scenario. The OOM kill needs a cgroup memory limit, which
/// the container leg has; the hard crash runs in every leg.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    if !lab.in_vm() {
        oom_killed_child(lab, rec)?;
    }
    hard_crash(lab, rec)
}

fn oom_killed_child(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.env("oom").memory(64, 64).start()?;
    rec.check(
        "an OOM-killed supervised child makes the daemon panic and wipe",
        |v| {
            let kills_before = oom_kills_in(&env)?;
            let daemon = env
                .daemon()
                .named("oom")
                .exec(&["/lab/bin/lab-probe", "hog"])
                .start()?;
            let ending = daemon.process.wait_end(PATIENCE * 2)?;
            let line = daemon.panic_line().unwrap_or_default();
            v.require(
                line.contains("supervised program killed by SIGKILL"),
                format!("the daemon logged: {line}"),
            );
            v.require(line.contains("wiped 1 secrets"), "the panic wiped 1 secret");
            v.require(
                ending.signal() == Some(9),
                format!("the daemon then ended: {}", ending.how),
            );
            let kills = oom_kills_in(&env)?.saturating_sub(kills_before);
            v.require(
                kills >= 1,
                format!("the container's memory cgroup counted {kills} new OOM kill(s)"),
            );
            v.figure("panic on OOM kill");
            Ok(())
        },
    );
    Ok(())
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
            let status = daemon.dazai(&env, &["status", "--json"])?;
            let status: serde_json::Value =
                serde_json::from_str(status.stdout.trim()).context("dazai status --json")?;
            let child = status["supervised"]["pid"]
                .as_i64()
                .context("supervised pid")?;
            let watcher = env.launch(
                "root",
                "watch-child",
                None,
                &["/lab/bin/lab-probe", "watch-gone", &child.to_string()],
            )?;
            watcher.wait_output("watching", PATIENCE)?;
            env.exec("lab", &["kill", "-9", &daemon.pid_arg()])?;
            let ending = daemon.process.wait_end(PATIENCE)?;
            watcher.wait_end(PATIENCE)?;
            let gone_ms: u128 = watcher
                .out()
                .lines()
                .find_map(|line| line.strip_prefix("gone unix_ms="))
                .and_then(|ms| ms.trim().parse().ok())
                .unwrap_or(0);
            let latency = gone_ms.saturating_sub(ending.unix_ms);
            v.require(
                ending.signal() == Some(9),
                format!("the daemon ended: {}", ending.how),
            );
            v.require(
                gone_ms > 0,
                format!(
                    "its supervised child (pid {child}) was gone {latency} ms later (PDEATHSIG)"
                ),
            );
            v.require(
                daemon.panic_line().is_none(),
                "no PANIC line: the wipe did not run (the documented limit)",
            );
            v.figure(format!("child gone in {latency} ms; no wipe"));
            v.as_limit();
            Ok(())
        },
    );
    Ok(())
}

/// The OOM kills the kernel counted in the container's memory cgroup (the
/// kernel log is a ring buffer that earlier runs can wrap away).
fn oom_kills_in(env: &Env) -> Result<u64> {
    let id = env.container_id()?;
    let counter_files = [
        // cgroup v1, docker's cgroupfs driver (these machines)
        format!("/sys/fs/cgroup/memory/docker/{id}/memory.oom_control"),
        // cgroup v2, systemd and cgroupfs drivers
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.events"),
        format!("/sys/fs/cgroup/docker/{id}/memory.events"),
    ];
    counter_files
        .iter()
        .find_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            text.lines()
                .find_map(|line| line.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse().ok())
        })
        .with_context(|| format!("no OOM-kill counter for container {id} in its memory cgroup"))
}
