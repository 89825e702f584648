//! Row **session loss** — "real SSH session dropped: sshd in a container;
//! `dazai client` inside the session; drops: client killed (`kill -9` of the
//! host `ssh`), `exit`, network cut (iptables DROP in the container's netns +
//! sshd ClientAlive), the heartbeat forwarded over SSH with `--ping-timeout`
//! and the link cut; with a pty AND without one (`ssh host cmd`); evidence:
//! daemon gone, registered processes gone, latency in ms".

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::env::{unix_ms, wait_for, Daemon, Env, Lab, PATIENCE};
use crate::runner::{Recorder, Verdict};

/// How the session is lost.
#[derive(Clone, Copy)]
enum Drop {
    /// `kill -9` of the host's `ssh`.
    KillClient,
    /// `exit` typed into the login shell.
    Exit,
    /// iptables DROP in the container; sshd's ClientAlive ends the session.
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
            |v| session_dropped(&env, index, pty, drop, v),
        );
    }
    rec.check(
        "a heartbeat forwarded over SSH with --ping-timeout 2 panics when the link is cut",
        |v| forwarded_heartbeat_cut(lab, &env, v),
    );
    Ok(())
}

fn session_dropped(env: &Env, index: usize, pty: bool, drop: Drop, v: &mut Verdict) -> Result<()> {
    let daemon = env.daemon().named(&format!("session-{index}")).start()?;
    let registered = daemon.register_sleeper(env, &format!("registered-{index}"))?;
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
    let dropped_at = unix_ms();
    match drop {
        Drop::KillClient => stop(&mut session),
        Drop::Exit => {
            let stdin = session.stdin.as_mut().context("ssh stdin")?;
            writeln!(stdin, "exit")?;
        }
        Drop::CutNetwork => env.cut_network()?,
    }
    let outcome = evidence_of_panic(&daemon, &registered, dropped_at, v);
    stop(&mut session);
    if let Drop::CutNetwork = drop {
        env.restore_network()?;
    }
    outcome
}

/// The daemon and the registered process must both be gone; the latency
/// runs from the drop to the daemon's end as its launcher saw it.
fn evidence_of_panic(
    daemon: &Daemon,
    registered: &crate::env::Launched,
    dropped_at: u128,
    v: &mut Verdict,
) -> Result<()> {
    let ending = daemon.process.wait_end(PATIENCE)?;
    let latency = ending.unix_ms.saturating_sub(dropped_at);
    v.require(
        ending.signal() == Some(9),
        format!("daemon gone ({}) {latency} ms after the drop", ending.how),
    );
    let line = daemon.panic_line().unwrap_or_default();
    v.require(
        line.contains("PANIC:"),
        format!("the daemon logged: {line}"),
    );
    let killed = registered.wait_end(PATIENCE)?;
    v.require(
        killed.signal() == Some(9),
        format!(
            "registered process {} gone ({}) {} ms after the drop",
            registered.pid,
            killed.how,
            killed.unix_ms.saturating_sub(dropped_at)
        ),
    );
    v.figure(format!("{latency} ms"));
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
        let client = std::process::Command::new(lab.bin_dir.join("dazai"))
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
        let cut_at = unix_ms();
        env.cut_network()?;
        evidence_of_panic(&daemon, &registered, cut_at, v)?;
        let line = daemon.panic_line().unwrap_or_default();
        v.require(
            line.contains("no PING for 2s"),
            "the panic's reason is the ping timeout (no FIN ever arrived)",
        );
        Ok(())
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
