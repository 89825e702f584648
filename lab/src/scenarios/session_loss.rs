//! Row **session loss** — "losing the session runs the panic" (its "what is
//! claimed" in docs/threat-model.md).
//!
//! The scenario: real SSH session dropped: Debian's sshd in a container, or
//! in a VM behind QEMU's forwarded port; `dazai client` inside the session;
//! drops: client killed (`kill -9` of the host `ssh`), `exit`, network cut
//! (iptables DROP in the container's netns, or the VM's link set down by the
//! QEMU monitor, then sshd's ClientAlive), the heartbeat forwarded over SSH
//! with `--ping-timeout` and the link cut; with a pty AND without one (`ssh
//! host cmd`); evidence: daemon gone, registered processes gone, latency in ms.

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::env::{unix_ms, wait_for, Daemon, Env, Lab, PATIENCE};
use crate::runner::{Recorder, Verdict};
use crate::scenarios::wipe::{locked_then_wiped, LastCall};

/// How the session is lost.
#[derive(Clone, Copy)]
enum Drop {
    /// `kill -9` of the host's `ssh`.
    KillClient,
    /// `exit` typed into the login shell.
    Exit,
    /// No packet passes (iptables DROP in the container, the VM's link
    /// down); sshd's ClientAlive ends the session.
    CutNetwork,
}

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.env("session-loss").ssh().cap_add("NET_ADMIN").start()?;
    let cases = [
        ("with a pty, killing the ssh client", true, Drop::KillClient),
        (
            "without a pty, killing the ssh client",
            false,
            Drop::KillClient,
        ),
        ("with a pty, typing exit", true, Drop::Exit),
        ("with a pty, cutting the network", true, Drop::CutNetwork),
        (
            "without a pty, cutting the network",
            false,
            Drop::CutNetwork,
        ),
    ];
    for (index, (how, pty, drop)) in cases.into_iter().enumerate() {
        rec.check(
            &format!("a dropped SSH session ({how}) runs the panic"),
            |v| session_dropped(&env, &format!("session-{index}"), &[], pty, drop, v),
        );
    }
    rec.control(
        "a daemon that outlives the end of its heartbeat (`--grace 600`), its ssh client killed",
        "daemon gone after the drop",
        |v| {
            let outlives = ["--grace", "600"];
            session_dropped(&env, "outlives", &outlives, true, Drop::KillClient, v)
        },
    );
    rec.check(
        "a heartbeat forwarded over SSH with --ping-timeout 2 panics when the link is cut",
        |v| forwarded_heartbeat_cut(lab, &env, v),
    );
    rec.check(
        "the panic of a dropped SSH session leaves no copy of the secret at its self-SIGKILL",
        |v| drop_observed(&env, v),
    );
    Ok(())
}

/// The drop of [`session_dropped`]'s first case, with a root observer on
/// the daemon (locked memory, so the observer can see the secret): the
/// canary in locked memory while alive, none at its final SIGKILL. Kept apart
/// from the timed cases: the observer's stops would weigh on their latency.
fn drop_observed(env: &Env, v: &mut Verdict) -> Result<()> {
    let daemon = env
        .daemon()
        .named("session-observed")
        .args(&["--memory", "locked"])
        .start()?;
    let mut session = env
        .ssh_session()
        .pty()
        .command(&daemon.client_command())
        .spawn()?;
    let outcome = (|| {
        daemon.wait_heartbeat(PATIENCE)?;
        let drop_it = || {
            let _ = session.kill();
            Ok(())
        };
        locked_then_wiped(env, &daemon, LastCall::SelfKill, drop_it, v)?;
        let line = daemon.panic_line().unwrap_or_default();
        v.require(
            line.contains("PANIC: heartbeat connection closed"),
            format!("the daemon logged: {line}"),
        );
        Ok(())
    })();
    stop(&mut session);
    outcome
}

/// A daemon started with `daemon_args`, its heartbeat held by a `dazai
/// client` in an SSH session (with a pty or not) that `drop` ends.
fn session_dropped(
    env: &Env,
    name: &str,
    daemon_args: &[&str],
    pty: bool,
    drop: Drop,
    v: &mut Verdict,
) -> Result<()> {
    let daemon = env.daemon().named(name).args(daemon_args).start()?;
    let registered = daemon.register_sleeper(env, &format!("registered-{name}"))?;
    let mut session = match drop {
        Drop::Exit => env.ssh_session().pty().spawn()?,
        _ if pty => env
            .ssh_session()
            .pty()
            .command(&daemon.client_command())
            .spawn()?,
        _ => env
            .ssh_session()
            .command(&daemon.client_command())
            .spawn()?,
    };
    if let Drop::Exit = drop {
        let stdin = session.stdin.as_mut().context("ssh stdin")?;
        writeln!(stdin, "{} &", daemon.client_command())?;
    }
    let attached = daemon.wait_heartbeat(PATIENCE);
    if attached.is_err() {
        stop(&mut session);
    }
    attached?;
    alive_before_the_drop(&daemon, &registered, v);
    let dropped_at = DropMoment::now(env);
    let dropped = match drop {
        Drop::KillClient => {
            stop(&mut session);
            Ok(())
        }
        Drop::Exit => session
            .stdin
            .as_mut()
            .context("ssh stdin")
            .and_then(|stdin| Ok(writeln!(stdin, "exit")?)),
        Drop::CutNetwork => env.cut_network(),
    };
    // The network is restored even when cutting it failed half-way.
    let outcome = dropped.and_then(|()| {
        evidence_of_panic(
            &daemon,
            &registered,
            dropped_at,
            "PANIC: heartbeat connection closed",
            v,
        )
    });
    stop(&mut session);
    if let Drop::CutNetwork = drop {
        env.restore_network()?;
    }
    outcome
}

/// Just before the drop, the daemon and the registered process both live:
/// an end that came earlier is no evidence of what the drop did.
fn alive_before_the_drop(daemon: &Daemon, registered: &crate::env::Launched, v: &mut Verdict) {
    v.require(
        daemon.process.ending().is_none() && registered.ending().is_none(),
        format!(
            "just before the drop the daemon (pid {}) and registered pid {} are alive",
            daemon.pid(),
            registered.pid
        ),
    );
}

/// When the host dropped the session, on the host's clock, and how far the
/// clock the ends are recorded on may be from it (0 in a container; a VM's
/// is set from the host's, within a bound).
#[derive(Clone, Copy)]
struct DropMoment {
    unix_ms: u128,
    uncertainty_ms: u128,
}

impl DropMoment {
    fn now(env: &Env) -> Self {
        DropMoment {
            unix_ms: unix_ms(),
            uncertainty_ms: env.clock_uncertainty_ms(),
        }
    }

    /// Whether an end recorded at `ended_at` can have come after the drop:
    /// only an end earlier by more than the clocks' uncertainty came first.
    fn precedes(self, ended_at: u128) -> bool {
        ended_at + self.uncertainty_ms >= self.unix_ms
    }

    /// `N ms` after the drop, or how long before it an end came.
    fn until(self, ended_at: u128) -> String {
        let within = match self.uncertainty_ms {
            0 => String::new(),
            ms => format!(" (the clocks within {ms} ms)"),
        };
        match ended_at.checked_sub(self.unix_ms) {
            Some(ms) => format!("{ms} ms{within}"),
            None if self.precedes(ended_at) => {
                format!("-{} ms{within}", self.unix_ms - ended_at)
            }
            None => format!(
                "-{} ms (it ended before the drop){within}",
                self.unix_ms - ended_at
            ),
        }
    }
}

/// After the drop: the daemon and the registered process must both be gone,
/// each after the drop (an end earlier than the drop by more than the
/// clocks' uncertainty came first), the daemon by its panic for `reason`.
fn evidence_of_panic(
    daemon: &Daemon,
    registered: &crate::env::Launched,
    dropped: DropMoment,
    reason: &str,
    v: &mut Verdict,
) -> Result<()> {
    let Ok(ending) = daemon.process.wait_end(v.patience()) else {
        let patience = v.patience().as_secs();
        v.require(
            false,
            format!("daemon gone after the drop: still alive {patience} s after it"),
        );
        return Ok(());
    };
    v.require(
        ending.signal() == Some(9) && dropped.precedes(ending.unix_ms),
        format!(
            "daemon gone after the drop ({}): {}",
            ending.how,
            dropped.until(ending.unix_ms)
        ),
    );
    let line = daemon.panic_line().unwrap_or_default();
    v.require(line.contains(reason), format!("the daemon logged: {line}"));
    let killed = registered.wait_end(PATIENCE)?;
    v.require(
        killed.signal() == Some(9) && dropped.precedes(killed.unix_ms),
        format!(
            "registered process {} gone ({}) {} after the drop",
            registered.pid,
            killed.how,
            dropped.until(killed.unix_ms)
        ),
    );
    v.figure(format!(
        "{} ms",
        ending.unix_ms.saturating_sub(dropped.unix_ms)
    ));
    Ok(())
}

fn forwarded_heartbeat_cut(lab: &Lab, env: &Env, v: &mut Verdict) -> Result<()> {
    let daemon = env
        .daemon()
        .named("forwarded")
        .args(&["--ping-timeout", "2"])
        .start()?;
    let registered = daemon.register_sleeper(env, "registered-forwarded")?;
    let local = env.run_dir.join("forwarded.sock");
    let _ = std::fs::remove_file(&local);
    let mut tunnel = env
        .ssh_session()
        .forward_socket(&local, &daemon.socket)
        .spawn()?;
    let result = (|| {
        wait_for("the forwarded socket", PATIENCE, || {
            local.exists().then_some(())
        })?;
        let log = std::fs::File::create(env.run_dir.join("host-client.log"))?;
        let client = std::process::Command::new(&lab.host_dazai)
            .arg("client")
            .arg("--socket")
            .arg(&local)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start the host's dazai client")?;
        Ok::<Child, anyhow::Error>(client)
    })();
    let mut client = match result {
        Ok(client) => client,
        Err(e) => {
            stop(&mut tunnel);
            return Err(e);
        }
    };
    let outcome = (|| {
        daemon.wait_heartbeat(PATIENCE)?;
        v.note("the host's dazai client holds the heartbeat through ssh -L of the UNIX socket");
        // Two seconds of PINGs first: the link works before it is cut.
        std::thread::sleep(Duration::from_secs(2));
        v.require(
            daemon.process.ending().is_none(),
            "the daemon lives 2 s into a working forwarded heartbeat",
        );
        alive_before_the_drop(&daemon, &registered, v);
        let cut_at = DropMoment::now(env);
        env.cut_network()?;
        // The ping timeout, not a closed connection: no FIN ever arrives.
        evidence_of_panic(&daemon, &registered, cut_at, "PANIC: no PING for 2s", v)
    })();
    stop(&mut client);
    stop(&mut tunnel);
    env.restore_network()?;
    outcome
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
