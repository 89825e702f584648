//! The heartbeat and the panic it triggers (docs/design.md, "The session and liveness" and "The panic"), observed from outside.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use dazai_e2e::{dazai, eventually, is_alive, signal, wait_exit, DaemonBuilder, SUPERVISED_TREE};
use nix::sys::signal::Signal;

#[test]
fn killing_the_client_kills_the_supervised_tree_and_the_daemon() {
    let mut daemon = DaemonBuilder::new()
        .secret("api", "canary-kill-client")
        .exec_shell(&format!("{SUPERVISED_TREE}wait"))
        .start();
    let program = daemon.read_pid_file("program.pid");
    let child = daemon.read_pid_file("child.pid");
    let escaped = daemon.read_pid_file("escaped.pid");
    let mut client = daemon.attach_client(&[]);

    client.kill().expect("kill -9 the client");
    let _ = client.wait();

    assert_eq!(
        daemon.wait_exit().signal(),
        Some(9),
        "daemon ends by SIGKILL"
    );
    for (what, pid) in [("program", program), ("its child", child)] {
        eventually(&format!("{what} (pid {pid}) to be killed"), || {
            !is_alive(pid)
        });
    }
    // The cgroup reaches the grandchild that called setsid; a process-group
    // kill cannot. The panic line says which ran (a kernel before 5.14 has
    // cgroups but no `cgroup.kill`, and the daemon logs that too).
    if daemon.log().contains("and its cgroup;") {
        eventually("the setsid grandchild to be killed", || !is_alive(escaped));
    } else {
        signal(escaped, Signal::SIGKILL);
    }
    let log = daemon.log();
    assert!(log.contains("PANIC: heartbeat connection closed"), "{log}");
    assert!(log.contains("wiped 1 secrets"), "{log}");
    assert!(
        !log.contains("canary-kill-client"),
        "the log leaked the secret: {log}"
    );
}

#[test]
fn second_heartbeat_is_refused_with_busy_and_first_survives() {
    let mut daemon = DaemonBuilder::new().start();
    let mut first = daemon.attach_client(&[]);

    let second = dazai()
        .args(["client", "--socket"])
        .arg(&daemon.socket)
        .output()
        .expect("run second client");

    assert_eq!(second.status.code(), Some(4), "BUSY is exit code 4");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("heartbeat already held by pid"), "{stderr}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "first client still running"
    );
    let status = daemon.status();
    assert_eq!(status["liveness"], "attached");
    assert_eq!(status["heartbeat"]["pid"], first.id());

    dazai_e2e::stop(&mut first);
    assert_eq!(daemon.wait_exit().signal(), Some(9));
}

/// A second login's `dazai client --standby`, its stderr piped so its one
/// line can be read.
fn standby_client(daemon: &dazai_e2e::Daemon) -> std::process::Child {
    dazai()
        .args(["client", "--standby", "--socket"])
        .arg(&daemon.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dazai client --standby")
}

/// The first line a client wrote to its stderr.
fn first_stderr_line(client: &mut std::process::Child) -> String {
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stderr.as_mut().expect("piped stderr")),
        &mut line,
    )
    .expect("read the client's stderr");
    line
}

#[test]
fn a_second_login_stands_by_and_takes_the_heartbeat_over_when_the_first_ends() {
    let daemon = DaemonBuilder::new()
        .args(&["--grace", "30"])
        .secret("api", "canary-second-login")
        .exec_shell("echo $$ > \"$DIR/program.pid\"; exec sleep 600")
        .start();
    let program = daemon.read_pid_file("program.pid");
    let mut first = daemon.attach_client(&[]);
    let mut second = standby_client(&daemon);

    let said = first_stderr_line(&mut second);
    assert!(
        said.contains("standing by: the heartbeat is held by pid"),
        "{said}"
    );
    assert_eq!(daemon.status()["standbys"][0], second.id());

    first.kill().expect("kill -9 the first login's client");
    let _ = first.wait();

    eventually("the second login to hold the heartbeat", || {
        daemon.status()["heartbeat"]["pid"] == second.id()
    });
    let status = daemon.status();
    assert_eq!(status["liveness"], "attached");
    assert_eq!(status["standbys"].as_array().map(Vec::len), Some(0));
    assert!(is_alive(program), "the supervised program was killed");
    let log = daemon.log();
    assert!(
        log.contains("handing the heartbeat over to standby pid"),
        "{log}"
    );
    assert!(!log.contains("PANIC"), "{log}");
    // The heartbeat it took over is a real one: its end is the session lost.
    dazai_e2e::stop(&mut second);
    eventually("the second login's end to lose the session", || {
        daemon.status()["liveness"] == "grace"
    });
}

#[test]
fn a_standby_without_a_grace_window_is_refused_with_the_fix() {
    let daemon = DaemonBuilder::new().start();
    let mut first = daemon.attach_client(&[]);

    let second = dazai()
        .args(["client", "--standby", "--socket"])
        .arg(&daemon.socket)
        .output()
        .expect("run dazai client --standby");

    assert_eq!(second.status.code(), Some(4), "a refusal is exit code 4");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("fix: start the daemon with --grace"),
        "{stderr}"
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "first client still running"
    );
    assert_eq!(daemon.status()["heartbeat"]["pid"], first.id());
    dazai_e2e::stop(&mut first);
}

#[test]
fn a_panic_asked_for_is_not_cancelled_by_a_standby() {
    let mut daemon = DaemonBuilder::new().args(&["--grace", "1"]).start();
    let mut first = daemon.attach_client(&[]);
    let mut second = standby_client(&daemon);
    eventually("the second login to stand by", || {
        daemon.status()["standbys"][0] == second.id()
    });

    let asked = dazai()
        .args(["panic", "--socket"])
        .arg(&daemon.socket)
        .output()
        .expect("run dazai panic");

    assert!(asked.status.success(), "{asked:?}");
    assert_eq!(daemon.wait_exit().signal(), Some(9));
    let log = daemon.log();
    assert!(
        log.contains("PANIC: grace window expired after: PANIC request"),
        "{log}"
    );
    assert!(!log.contains("handing the heartbeat over"), "{log}");
    let _ = first.wait();
    let _ = second.wait();
}

#[test]
fn a_stopped_client_with_ping_timeout_triggers_the_panic() {
    let mut daemon = DaemonBuilder::new().args(&["--ping-timeout", "1"]).start();
    let mut client = daemon.attach_client(&[]);

    signal(client.id() as i32, Signal::SIGSTOP);

    assert_eq!(daemon.wait_exit().signal(), Some(9));
    let log = daemon.log();
    assert!(log.contains("PANIC: no PING for 1s"), "{log}");
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn a_pinging_client_keeps_the_daemon_alive_past_its_ping_timeout() {
    let daemon = DaemonBuilder::new().args(&["--ping-timeout", "1"]).start();
    let mut client = daemon.attach_client(&[]);

    // Three timeouts' worth of PINGs: the daemon must still be attached after.
    let pongs_before = daemon.log();
    std::thread::sleep(std::time::Duration::from_millis(3_000));

    assert_eq!(daemon.status()["liveness"], "attached", "{pongs_before}");
    assert!(client.try_wait().unwrap().is_none());
    dazai_e2e::stop(&mut client);
}

#[test]
fn a_heartbeat_that_reattaches_within_grace_cancels_the_panic() {
    let daemon = DaemonBuilder::new().args(&["--grace", "30"]).start();
    let mut first = daemon.attach_client(&[]);

    dazai_e2e::stop(&mut first);
    let _ = first.wait();
    eventually("the grace window to start", || {
        daemon.status()["liveness"] == "grace"
    });
    let mut second = daemon.attach_client(&[]);

    assert_eq!(daemon.status()["liveness"], "attached");
    assert!(daemon
        .log()
        .contains("within the grace window: panic cancelled"));
    dazai_e2e::stop(&mut second);
}

#[test]
fn sigusr2_bypasses_the_grace_window() {
    let mut daemon = DaemonBuilder::new().args(&["--grace", "30"]).start();
    let mut client = daemon.attach_client(&[]);
    dazai_e2e::stop(&mut client);
    let _ = client.wait();
    eventually("the grace window to start", || {
        daemon.status()["liveness"] == "grace"
    });

    signal(daemon.pid, Signal::SIGUSR2);

    assert_eq!(daemon.wait_exit().signal(), Some(9));
    assert!(daemon.log().contains("PANIC: SIGUSR2"));
}

#[test]
fn sigusr1_storms_during_grace_do_not_move_the_deadline() {
    let mut daemon = DaemonBuilder::new().args(&["--grace", "2"]).start();
    let mut client = daemon.attach_client(&[]);
    signal(daemon.pid, Signal::SIGUSR1);
    eventually("the grace window to start", || {
        daemon.status()["liveness"] == "grace"
    });
    let first_left = daemon.status()["grace_left_secs"].as_f64().unwrap();

    for _ in 0..50 {
        signal(daemon.pid, Signal::SIGUSR1);
    }
    let later_left = daemon.status()["grace_left_secs"].as_f64().unwrap();

    assert!(later_left <= first_left, "{later_left} > {first_left}");
    assert_eq!(daemon.wait_exit().signal(), Some(9));
    assert!(daemon
        .log()
        .contains("PANIC: grace window expired after: SIGUSR1"));
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn arm_timeout_panics_when_no_heartbeat_attaches() {
    let mut daemon = DaemonBuilder::new().args(&["--arm-timeout", "1"]).start();

    assert_eq!(daemon.wait_exit().signal(), Some(9));
    assert!(daemon.log().contains("PANIC: no heartbeat within 1s"));
}

#[test]
fn a_registered_process_is_killed_by_the_panic() {
    let mut daemon = DaemonBuilder::new().start();
    let mut victim = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let reply = daemon.exchange(format!("dazai/1 REGISTER {}\n", victim.id()).as_bytes());
    assert_eq!(reply, format!("OK registered pid {}\n", victim.id()));

    let panic = dazai()
        .args(["panic", "--hard", "--socket"])
        .arg(&daemon.socket)
        .status()
        .unwrap();

    assert!(panic.success());
    assert_eq!(daemon.wait_exit().signal(), Some(9));
    assert_eq!(
        wait_exit(&mut victim).signal(),
        Some(9),
        "registered process SIGKILLed"
    );
}

#[test]
fn client_ends_on_sighup() {
    let daemon = DaemonBuilder::new().args(&["--grace", "60"]).start();
    let mut client = daemon.attach_client(&[]);

    signal(client.id() as i32, Signal::SIGHUP);

    assert_eq!(wait_exit(&mut client).code(), Some(0));
    eventually("the daemon to see the session lost", || {
        daemon.status()["liveness"] == "grace"
    });
}

#[test]
fn client_ends_when_its_stdin_hangs_up_but_not_on_dev_null() {
    let daemon = DaemonBuilder::new().args(&["--grace", "60"]).start();
    let mut piped = dazai()
        .args(["client", "--socket"])
        .arg(&daemon.socket)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the piped client to attach", || {
        daemon.status()["liveness"] == "attached"
    });

    drop(piped.stdin.take()); // the SSH channel without a pty closes: POLLHUP

    assert_eq!(wait_exit(&mut piped).code(), Some(0));
    let mut stderr = String::new();
    piped
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("stdin hung up"), "{stderr}");

    // `dazai client </dev/null &` must keep holding: EOF is not a hang-up.
    let mut quiet = daemon.attach_client(&[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        quiet.try_wait().unwrap().is_none(),
        "a /dev/null stdin ended the client"
    );
    dazai_e2e::stop(&mut quiet);
}

#[test]
fn client_ends_when_its_parent_dies() {
    let daemon = DaemonBuilder::new().args(&["--grace", "60"]).start();
    let client_pid_file = daemon.path("client.pid");
    // A parent shell that starts the client in the background and reports its pid.
    let mut parent = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "{} client --socket {} </dev/null >/dev/null 2>&1 & echo $! > {}; wait",
            dazai_e2e::dazai_bin().display(),
            daemon.socket.display(),
            client_pid_file.display()
        ))
        .spawn()
        .unwrap();
    let client_pid = daemon.read_pid_file("client.pid");
    eventually("the client to attach", || {
        daemon.status()["liveness"] == "attached"
    });

    dazai_e2e::stop(&mut parent);
    let _ = parent.wait();

    eventually("the orphaned client to exit", || !is_alive(client_pid));
    eventually("the daemon to see the session lost", || {
        daemon.status()["liveness"] == "grace"
    });
}

#[test]
fn the_heartbeat_connection_sending_garbage_counts_as_liveness_lost() {
    let mut daemon = DaemonBuilder::new().start();
    let mut heartbeat = daemon.connect();
    heartbeat.write_all(b"dazai/1 HEARTBEAT\n").unwrap();
    let mut reply = [0u8; 64];
    let n = heartbeat.read(&mut reply).unwrap();
    assert!(reply[..n].starts_with(b"OK heartbeat attached"));

    heartbeat.write_all(b"PONG?\n").unwrap();

    assert_eq!(daemon.wait_exit().signal(), Some(9));
    assert!(daemon
        .log()
        .contains("PANIC: heartbeat connection sent garbage"));
}
