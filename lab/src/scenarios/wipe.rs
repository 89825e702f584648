//! Row **wipe** — "the binary wipes before it dies" (its "what is claimed" in
//! docs/threat-model.md).
//!
//! The scenario: the real binary wipes before it dies: a root observer with
//! `CAP_SYS_PTRACE` traces the daemon, stops it at syscall entry of its own
//! final `SIGKILL`, scans every readable mapping of `/proc/PID/mem` for the
//! canary: 0 hits; and while alive: every hit lies inside a mapping that is
//! locked and `dd` (no stray copies in heap/stack).

use anyhow::{bail, Context, Result};
use lab_guest::procfs::{HeldRange, Hit, Scan};

use crate::env::{last_json, wait_for, Daemon, Env, Lab, PATIENCE, RUN};
use crate::runner::{Recorder, Verdict};
use crate::stand_in::hold_probe;

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.env("wipe").cap_add("SYS_PTRACE").start()?;
    // The locked backend: root can read it, so the scan can see the wipe
    // (secret memory would hide the canary from the observer either way).
    let program = format!(
        "/lab/bin/dazai get api | wc -c > {RUN}/handed-out.part && mv {RUN}/handed-out.part {RUN}/handed-out; exec sleep 600"
    );
    let daemon = env
        .daemon()
        .args(&["--memory", "locked"])
        .exec(&["/bin/sh", "-c", &program])
        .start()?;
    let mut held = Vec::new();
    rec.check(
        "while alive, every copy of the secret lies in locked, no-dump memory",
        |v| {
            hand_out_once(&env, &daemon)?;
            v.note("the secret was handed out once (`dazai get` in the supervised program) before the scan");
            held = every_copy_is_locked(&env, daemon.pid(), &daemon.canary_file, v)?;
            Ok(())
        },
    );
    rec.check(
        "the daemon wipes the secret before its final SIGKILL",
        |v| {
            wiped_at_self_kill(&env, daemon.pid(), &daemon.canary_file, &held, v)?;
            let line = daemon.panic_line().unwrap_or_default();
            v.require(
                line.contains("wiped 1 secrets"),
                format!("the daemon logged: {line}"),
            );
            Ok(())
        },
    );
    rec.check(
        "a clean shutdown (SIGTERM) leaves no copy of the secret at its exit_group",
        |v| {
            let stopping = env
                .daemon()
                .named("stopping")
                .args(&["--memory", "locked"])
                .start()?;
            let term = send_as_lab(&env, stopping.pid(), "-TERM");
            locked_then_wiped(&env, &stopping, LastCall::ExitGroup, term, v)
        },
    );
    rec.check(
        "the one-shot end (the program exits) leaves no copy of the secret at its exit_group",
        |v| {
            let ending = env
                .daemon()
                .named("one-shot")
                .args(&["--memory", "locked"])
                .exec(&[
                    "/bin/sh",
                    "-c",
                    &format!("while [ ! -e {RUN}/end-now ]; do sleep 0.05; done"),
                ])
                .start()?;
            let end_now = || {
                std::fs::write(env.run_dir.join("end-now"), "")?;
                Ok(())
            };
            locked_then_wiped(&env, &ending, LastCall::ExitGroup, end_now, v)
        },
    );
    rec.check(
        "`dazai get` leaves no copy of the secret at its exit_group (it writes from locked memory)",
        |v| hand_out_leaves_no_copy(&env, v),
    );
    rec.check(
        "`dazai mcp` wipes the output of a call still running when the daemon goes away (at its exit_group)",
        |v| mcp_output_wiped_when_the_daemon_goes(&env, v),
    );
    rec.check(
        "a crash of the daemon (SIGSEGV) wipes the secret before its final SIGKILL",
        |v| {
            let crashing = env
                .daemon()
                .named("crashing")
                .args(&["--memory", "locked"])
                .start()?;
            let segv = send_as_lab(&env, crashing.pid(), "-SEGV");
            locked_then_wiped(&env, &crashing, LastCall::SelfKill, segv, v)?;
            let log = crashing.log();
            v.require(
                log.contains("PANIC: fatal error in the daemon itself"),
                format!(
                    "the daemon logged: {}",
                    log.lines().last().unwrap_or_default()
                ),
            );
            Ok(())
        },
    );
    broken_holders(&env, rec);
    Ok(())
}

/// The row's own checks against holders broken on purpose: each must turn red.
fn broken_holders(env: &Env, rec: &mut Recorder) {
    rec.control(
        "a holder that skips its wipe (`lab-probe hold --skip-wipe`)",
        "1 canary hits at the self-SIGKILL",
        |v| {
            let (probe, canary) = hold_probe(env, "skips-wipe", &["--skip-wipe"])?;
            let held = every_copy_is_locked(env, probe.pid, &canary, v)?;
            wiped_at_self_kill(env, probe.pid, &canary, &held, v)
        },
    );
    // A scan for the whole canary alone would pass it.
    rec.control(
        "a holder whose wipe stops half-way (`--leave-half`)",
        "1 canary hits at the self-SIGKILL",
        |v| {
            let (probe, canary) = hold_probe(env, "leaves-half", &["--leave-half"])?;
            wiped_at_self_kill(env, probe.pid, &canary, &[], v)
        },
    );
    // A scan at the end cannot see pages that are gone: the ranges that held
    // the secret while alive are looked at again.
    rec.control(
        "a holder that unmaps a second locked copy without zeroing it (`--unmap-unwiped`)",
        "1 of the 2 range(s) that held the secret",
        |v| {
            let (probe, canary) = hold_probe(env, "unmaps", &["--unmap-unwiped"])?;
            let held = every_copy_is_locked(env, probe.pid, &canary, v)?;
            wiped_at_self_kill(env, probe.pid, &canary, &held, v)
        },
    );
    rec.control(
        "a holder that keeps a stray copy on the heap (`--heap-copy`)",
        "1 of 2 hits lie outside a locked, dd mapping",
        |v| {
            let (probe, canary) = hold_probe(env, "heap-copy", &["--heap-copy"])?;
            every_copy_is_locked(env, probe.pid, &canary, v).map(drop)
        },
    );
}

/// A supervised `dazai get` (locked memory, so root can see it) waits for
/// the heartbeat; the observer follows it from there: the scan at its write
/// to stdout must find the secret, the scan at its `exit_group` must not.
fn hand_out_leaves_no_copy(env: &Env, v: &mut Verdict) -> Result<()> {
    let program = format!(
        "echo $$ > {RUN}/getter.part && mv {RUN}/getter.part {RUN}/getter; export DAZAI_MEMORY=locked; exec /lab/bin/dazai get api > /dev/null"
    );
    let daemon = env
        .daemon()
        .named("getter")
        .args(&["--memory", "locked"])
        .exec(&["/bin/sh", "-c", &program])
        .start()?;
    let pid: i32 = wait_for("the getter's pid", PATIENCE, || {
        std::fs::read_to_string(env.run_dir.join("getter")).ok()
    })?
    .trim()
    .parse()?;
    let pid_arg = pid.to_string();
    // Traced only once it is `dazai get`, waiting for the switch to be armed.
    wait_for("the getter to exec dazai", PATIENCE, || {
        let exe = env
            .exec("root", &["readlink", &format!("/proc/{pid}/exe")])
            .ok()?;
        exe.stdout.trim().ends_with("dazai").then_some(())
    })?;
    let observer = env.launch(
        "root",
        "hand-out-observer",
        None,
        &[
            "/lab/bin/lab-observer",
            "hand-out",
            &pid_arg,
            &daemon.canary_file,
        ],
    )?;
    observer
        .wait_output("\"attached\"", PATIENCE)
        .context("observer did not attach")?;
    let _client = daemon.attach_client(env)?;
    observer.wait_end(PATIENCE)?;
    let result = last_json(&observer.out()).context("observer gave no result")?;
    if let Some(error) = result.get("error") {
        bail!("observer: {error}");
    }
    let writing: Scan = serde_json::from_value(result["at_write"].clone())?;
    let exiting: Scan = serde_json::from_value(result["at_exit"].clone())?;
    v.require(
        !writing.hits.is_empty(),
        format!(
            "at its write to stdout the scan finds the secret {} time(s) (the control)",
            writing.hits.len()
        ),
    );
    v.require(
        exiting.mappings_read > 0 && exiting.hits.is_empty(),
        format!(
            "at its exit_group: {} hits in {} mappings ({} KiB)",
            exiting.hits.len(),
            exiting.mappings_read,
            exiting.bytes_read / 1024
        ),
    );
    for hit in &exiting.hits {
        v.note(format!(
            "hit at {:#x} in {}",
            hit.address,
            hit.mapping.describe()
        ));
    }
    let end = result["end"].as_str().unwrap_or_default();
    v.require(end == "exited with 0", format!("dazai get {end}"));
    v.figure(format!("{} hits at exit", exiting.hits.len()));
    Ok(())
}

/// An exec tool that prints the injected secret and keeps running, so the
/// session holds the secret in the output it collects for the agent.
const PRINTING_TOOL: &str = r#"[[tool]]
name = "print_and_wait"
description = "prints the token, then waits"
kind = "exec"
program = "/bin/sh"
args = ["-c", "printf %s \"$API_KEY\"; exec sleep 600"]
inject = { API_KEY = "secret:api" }
timeout_secs = 600
"#;

/// What the agent sends: the MCP handshake and one call, then it waits.
const AGENT_LINES: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"lab","version":"1"}}}
{"jsonrpc":"2.0","method":"notifications/initialized"}
{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"print_and_wait","arguments":{}}}
"#;

/// A call's output lives in the session's ordinary heap (redacted only when
/// the call ends). The daemon stops (`dazai stop`: nothing is killed) while
/// the call runs; the session's watch thread learns of it and ends the
/// session. Control: a live scan of the session finds the secret first.
fn mcp_output_wiped_when_the_daemon_goes(env: &Env, v: &mut Verdict) -> Result<()> {
    let tools = env.put("printing-tools.toml", PRINTING_TOOL.as_bytes())?;
    let daemon = env
        .daemon()
        .named("mcp")
        .args(&["--memory", "locked"])
        .exec(&["/lab/bin/dazai", "mcp", "serve", "--tools", &tools])
        .start()?;
    let _client = daemon.attach_client(env)?;
    let agent_lines = env.put("agent-lines", AGENT_LINES.as_bytes())?;
    let _agent = env.launch(
        "lab",
        "agent",
        None,
        &[
            "/bin/sh",
            "-c",
            &format!(
                "(cat {agent_lines}; exec sleep 600) | /lab/bin/dazai mcp --socket {}",
                daemon.socket
            ),
        ],
    )?;
    // The session registers itself with the daemon as it starts.
    let session: i32 = wait_for("the agent's session", PATIENCE, || {
        daemon.log().lines().find_map(|line| {
            let (_, rest) = line.split_once("registered pid ")?;
            let (pid, by) = rest.split_once(" (requested by pid ")?;
            (by.trim_end_matches(')') == pid).then(|| pid.parse().ok())?
        })
    })?;
    let live = wait_for("the secret in the session's output", PATIENCE, || {
        let scan = env.scan(session, &daemon.canary_file).ok()?;
        (!scan.hits.is_empty()).then_some(scan)
    })?;
    v.require(
        !live.hits.is_empty(),
        format!(
            "while the call runs, a live scan of the session (pid {session}) finds the secret {} time(s) (the control)",
            live.hits.len()
        ),
    );
    // The thread that ends the session, and so makes its exit_group.
    let watch = env
        .sh(
            "root",
            &format!("grep -lx daemon-watch /proc/{session}/task/*/comm | cut -d/ -f5"),
        )?
        .stdout
        .trim()
        .parse::<i32>()
        .context("the session's daemon-watch thread")?;
    let stop = || {
        let ran = daemon.dazai(env, &["stop"])?;
        if ran.code != Some(0) {
            bail!("dazai stop: {}", ran.stderr);
        }
        Ok(())
    };
    // No ranges to look at again: the output lay in the heap, which the
    // session reuses once the wiped buffers are freed.
    wiped_at_last_call(
        env,
        watch,
        &daemon.canary_file,
        &[],
        LastCall::ExitGroup,
        stop,
        v,
    )
}

/// The supervised program fetches the secret once a heartbeat arms the
/// switch, so the scan also covers the paths a hand-out takes.
fn hand_out_once(env: &Env, daemon: &Daemon) -> Result<()> {
    let _client = daemon.attach_client(env)?;
    let count = wait_for("the program's dazai get", PATIENCE, || {
        std::fs::read_to_string(env.run_dir.join("handed-out")).ok()
    })?;
    if count.trim() != daemon.canary.len().to_string() {
        bail!("dazai get handed out {} bytes", count.trim());
    }
    Ok(())
}

/// Scans the live process `pid`: the canary must be found (or the scan
/// proves nothing) and every hit must be in a locked, `dd` mapping.
pub fn every_copy_is_locked(
    env: &Env,
    pid: i32,
    canary_file: &str,
    v: &mut Verdict,
) -> Result<Vec<Hit>> {
    let scan = env.scan(pid, canary_file)?;
    v.require(
        !scan.hits.is_empty(),
        format!(
            "the observer read {} mappings ({} KiB) of pid {pid} and found the canary {} time(s)",
            scan.mappings_read,
            scan.bytes_read / 1024,
            scan.hits.len()
        ),
    );
    let stray: Vec<_> = scan
        .hits
        .iter()
        .filter(|hit| !hit.mapping.is_secret_shaped())
        .collect();
    for hit in &scan.hits {
        v.note(format!(
            "hit at {:#x} in {}",
            hit.address,
            hit.mapping.describe()
        ));
    }
    v.require(
        stray.is_empty(),
        format!(
            "{} of {} hits lie outside a locked, dd mapping",
            stray.len(),
            scan.hits.len()
        ),
    );
    v.figure(format!("{} hit(s), {} stray", scan.hits.len(), stray.len()));
    Ok(scan.hits)
}

/// Traces `pid`, makes it panic (SIGUSR2, as its own user), stops it at
/// the entry of `kill(pid, SIGKILL)` and scans it there: 0 hits required.
pub fn wiped_at_self_kill(
    env: &Env,
    pid: i32,
    canary_file: &str,
    held: &[Hit],
    v: &mut Verdict,
) -> Result<()> {
    let panic = send_as_lab(env, pid, "-USR2");
    wiped_at_last_call(env, pid, canary_file, held, LastCall::SelfKill, panic, v)
}

/// The live scan of `daemon` (every copy locked: the control), then
/// `end_it` with the observer waiting at its `last` system call.
pub fn locked_then_wiped(
    env: &Env,
    daemon: &Daemon,
    last: LastCall,
    end_it: impl FnOnce() -> Result<()>,
    v: &mut Verdict,
) -> Result<()> {
    let held = every_copy_is_locked(env, daemon.pid(), &daemon.canary_file, v)?;
    wiped_at_last_call(
        env,
        daemon.pid(),
        &daemon.canary_file,
        &held,
        last,
        end_it,
        v,
    )
}

/// Sends `signal` (`-USR2`, `-SEGV`, …) to `pid` as `lab`, its own user.
pub fn send_as_lab<'a>(
    env: &'a Env,
    pid: i32,
    signal: &'a str,
) -> impl FnOnce() -> Result<()> + 'a {
    move || {
        let ran = env.exec("lab", &["kill", signal, &pid.to_string()])?;
        if ran.code != Some(0) {
            bail!("kill {signal} {pid}: {}", ran.stderr);
        }
        Ok(())
    }
}

/// The last system call of a daemon's end, where the observer stops it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LastCall {
    /// The panic's `kill(self, SIGKILL)`.
    SelfKill,
    /// A clean end's `exit_group`: a clean shutdown, the one-shot end.
    ExitGroup,
}

/// Traces `pid`, runs `end_it`, stops the daemon at the entry of its `last`
/// system call and scans every readable mapping there: 0 hits required.
pub fn wiped_at_last_call(
    env: &Env,
    pid: i32,
    canary_file: &str,
    held: &[Hit],
    last: LastCall,
    end_it: impl FnOnce() -> Result<()>,
    v: &mut Verdict,
) -> Result<()> {
    let AtLastCall { scan, result } =
        scan_at_last_call(env, pid, canary_file, held, last, end_it, v)?;
    let where_ = match last {
        LastCall::SelfKill => "the self-SIGKILL",
        LastCall::ExitGroup => "exit_group",
    };
    v.require(
        scan.hits.is_empty(),
        format!(
            "{} canary hits at {where_} (whole, pieces of 8 bytes or more, hex, base64)",
            scan.hits.len()
        ),
    );
    let rechecked: Vec<HeldRange> = serde_json::from_value(result["held"].clone())?;
    if !held.is_empty() {
        let wiped = rechecked
            .iter()
            .filter(|r| r.mapped && r.read && r.zeroed)
            .count();
        v.require(
            rechecked.len() == held.len() && wiped == held.len(),
            format!(
                "{wiped} of the {} range(s) that held the secret while alive are mapped, read and all zeros at the last moment they could be read (their munmap, or the end): {rechecked:?}",
                held.len()
            ),
        );
    }
    v.figure(format!(
        "{} hits in {} KiB",
        scan.hits.len(),
        scan.bytes_read / 1024
    ));
    Ok(())
}

/// What the observer saw at a daemon's last system call.
pub struct AtLastCall {
    /// Its scan of every readable mapping there.
    pub scan: Scan,
    /// Its whole result (the held ranges rechecked, the end).
    pub result: serde_json::Value,
}

/// Traces `pid` (the ranges `held` while alive rechecked too), runs
/// `end_it`, and scans the daemon at the entry of its `last` system call;
/// requires that it stopped there, read something, and ended as `last` ends.
pub fn scan_at_last_call(
    env: &Env,
    pid: i32,
    canary_file: &str,
    held: &[Hit],
    last: LastCall,
    end_it: impl FnOnce() -> Result<()>,
    v: &mut Verdict,
) -> Result<AtLastCall> {
    let pid_arg = pid.to_string();
    let mode = match last {
        LastCall::SelfKill => "wipe",
        LastCall::ExitGroup => "wipe-at-exit",
    };
    let ranges: Vec<String> = held
        .iter()
        .map(|hit| format!("{:x}:{}", hit.address, hit.length))
        .collect();
    let ranges = ranges.join(",");
    let observer = env.launch(
        "root",
        "wipe-observer",
        None,
        &[
            "/lab/bin/lab-observer",
            mode,
            &pid_arg,
            canary_file,
            &ranges,
        ],
    )?;
    observer
        .wait_output("\"attached\"", PATIENCE)
        .context("observer did not attach")?;
    end_it()?;
    observer.wait_end(PATIENCE)?;
    let result = last_json(&observer.out()).context("observer gave no result")?;
    if let Some(error) = result.get("error") {
        bail!("observer: {error}");
    }
    let scan: Scan = serde_json::from_value(result["scan"].clone())?;
    let stopped_at = result["stopped_at"].as_str().unwrap_or_default();
    let (expected_stop, expected_end) = match last {
        LastCall::SelfKill => (format!("kill({pid}, 9)"), "SIGKILL"),
        LastCall::ExitGroup => ("exit_group(".to_owned(), "exit"),
    };
    v.require(
        stopped_at.starts_with(&expected_stop),
        format!("the observer stopped pid {pid} at the entry of {stopped_at}"),
    );
    v.require(
        scan.mappings_read > 0,
        format!(
            "it read {} readable mappings ({} KiB) there; unreadable: {}",
            scan.mappings_read,
            scan.bytes_read / 1024,
            scan.unreadable.len()
        ),
    );
    for hit in &scan.hits {
        v.note(format!(
            "{} bytes ({}) at {:#x} in {}",
            hit.length,
            hit.form,
            hit.address,
            hit.mapping.describe()
        ));
    }
    let end = result["end"].as_str().unwrap_or_default();
    v.require(
        end.contains(expected_end),
        format!("released, pid {pid} was {end}"),
    );
    Ok(AtLastCall { scan, result })
}
