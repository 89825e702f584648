//! Who may obtain a secret: only a holder of the capability the daemon hands
//! its supervised program. Each test is an attack a script or an AI agent with
//! a shell of the user's own uid can make, and the positive control beside it.

use std::fs;
use std::process::Command;

use dazai_e2e::{dazai_bin, eventually, exists, fetcher_script, stop, DaemonBuilder};

const CANARY: &str = "canary-capability-0123456789";

/// The supervised program that reads the secret at its very first instant.
fn get_at_once() -> String {
    format!(
        r#"{} get api > "$DIR/got.part" 2> "$DIR/got.err"; echo $? > "$DIR/got.rc"; mv "$DIR/got.part" "$DIR/got"; exec sleep 600"#,
        dazai_bin().display()
    )
}

#[test]
fn registering_grants_no_secret_to_a_process_outside_the_tree() {
    let daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .exec_shell(&get_at_once())
        .start();
    let mut client = daemon.attach_client(&[]);
    eventually("the supervised program's own get", || {
        exists(&daemon.path("got"))
    });
    // The positive control: inside the tree, `dazai get` works without set-up.
    assert_eq!(fs::read_to_string(daemon.path("got")).unwrap(), CANARY);

    let bin = dazai_bin().display().to_string();
    let attack = Command::new("sh")
        .env("DAZAI_SOCKET", &daemon.socket)
        .env_remove("DAZAI_CAPABILITY_FD")
        .args([
            "-c",
            &format!(r#"{bin} register $$ >/dev/null && exec {bin} get api"#),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&attack.stderr);
    assert_eq!(attack.status.code(), Some(4), "{stderr}");
    assert!(attack.stdout.is_empty(), "the attacker got bytes");
    assert!(stderr.contains("holds no capability"), "{stderr}");
    assert!(!daemon.log().contains(CANARY), "the log holds the secret");
    stop(&mut client);
}

/// An outsider that makes a descriptor of its own, or hands over its own
/// connection to the daemon's socket, obtains nothing.
#[test]
fn no_descriptor_an_outsider_can_make_stands_in_for_the_capability() {
    let daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .exec_shell("exec sleep 600")
        .start();
    let mut client = daemon.attach_client(&[]);
    // Each script execs `dazai get` holding a descriptor it made itself, its
    // number in DAZAI_CAPABILITY_FD.
    let own_pair = r#"
import os, socket, sys
mine, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
os.set_inheritable(mine.fileno(), True)
os.environ["DAZAI_CAPABILITY_FD"] = str(mine.fileno())
os.execv(sys.argv[1], [sys.argv[1], "get", "api"])
"#;
    let daemon_connection = r#"
import os, socket, sys
stream = socket.socket(socket.AF_UNIX)
stream.connect(os.environ["DAZAI_SOCKET"])
os.set_inheritable(stream.fileno(), True)
os.environ["DAZAI_CAPABILITY_FD"] = str(stream.fileno())
os.execv(sys.argv[1], [sys.argv[1], "get", "api"])
"#;
    for (what, script, says) in [
        ("a socket pair of its own", own_pair, "the daemon closed"),
        (
            "its own connection to the socket",
            daemon_connection,
            "a socket of another kind",
        ),
    ] {
        let attack = Command::new("python3")
            .args(["-c", script])
            .arg(dazai_bin())
            .env("DAZAI_SOCKET", &daemon.socket)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&attack.stderr);
        assert!(!attack.status.success(), "{what}: {stderr}");
        assert!(attack.stdout.is_empty(), "{what}: the attacker got bytes");
        assert!(stderr.contains(says), "{what}: {stderr}");
    }
    assert!(
        !daemon.log().contains("handed out"),
        "a secret left the daemon: {}",
        daemon.log()
    );
    stop(&mut client);
}

/// `/proc/PID/fd/N` of the supervised program names the capability, but a
/// socket cannot be opened through it (whoever asks: this test runs as root).
#[test]
fn the_capability_cannot_be_reopened_through_proc_fd() {
    let daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .exec_shell(r#"echo "$$ $DAZAI_CAPABILITY_FD" > "$DIR/holder"; exec sleep 600"#)
        .start();
    eventually("the program to report its descriptor", || {
        fs::read_to_string(daemon.path("holder")).is_ok_and(|t| t.ends_with('\n'))
    });
    let holder = fs::read_to_string(daemon.path("holder")).unwrap();
    let (pid, fd) = holder.trim().split_once(' ').unwrap();
    let path = format!("/proc/{pid}/fd/{fd}");
    let target = fs::read_link(&path).unwrap();
    assert!(
        target.to_string_lossy().starts_with("socket:"),
        "{path} -> {}",
        target.display()
    );
    let error = fs::File::open(&path).expect_err("a socket opened through /proc");
    assert_eq!(error.raw_os_error(), Some(libc::ENXIO), "{error}");
}

#[test]
fn register_refuses_pid_1_and_the_daemon_itself() {
    let daemon = DaemonBuilder::new().secret("api", CANARY).start();
    let daemon_group = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(daemon.pid)))
        .unwrap()
        .as_raw();
    for (request, says) in [
        ("dazai/1 REGISTER 1\n".to_owned(), "pid 1"),
        (
            format!("dazai/1 REGISTER {}\n", daemon.pid),
            "it is the daemon itself",
        ),
        (
            format!("dazai/1 REGISTER {daemon_group} GROUP\n"),
            if daemon_group == daemon.pid {
                "it is the daemon itself"
            } else {
                "its process group holds the daemon"
            },
        ),
    ] {
        let reply = daemon.exchange(request.as_bytes());
        assert!(
            reply.starts_with("ERR cannot register") && reply.contains(says),
            "{request:?}: {reply}"
        );
    }
    assert_eq!(daemon.status()["registered"], serde_json::json!([]));
}

/// A program that asks at its first instant waits for the heartbeat: no
/// secret leaves before the switch is armed.
#[test]
fn a_get_before_the_heartbeat_waits_for_it() {
    let daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .exec_shell(&get_at_once())
        .start();
    // The GET has reached the daemon, which holds it: no answer yet.
    eventually("the daemon to hold the early GET", || {
        daemon.status()["waiting_gets"] == 1
    });
    assert!(
        !exists(&daemon.path("got")),
        "a secret left before the switch was armed"
    );
    let mut client = daemon.attach_client(&[]);
    eventually("the waiting GET to be answered", || {
        exists(&daemon.path("got"))
    });
    assert_eq!(fs::read_to_string(daemon.path("got")).unwrap(), CANARY);
    stop(&mut client);
}

#[test]
fn a_get_with_no_heartbeat_at_all_is_refused() {
    let daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .exec_shell(&get_at_once())
        .start();
    eventually("the waiting GET to be refused", || {
        exists(&daemon.path("got"))
    });
    assert_eq!(
        fs::read_to_string(daemon.path("got.rc")).unwrap().trim(),
        "4"
    );
    assert_eq!(fs::read_to_string(daemon.path("got")).unwrap(), "");
    let stderr = fs::read_to_string(daemon.path("got.err")).unwrap();
    assert!(stderr.contains("the switch is not armed"), "{stderr}");
}

#[test]
fn a_get_in_the_grace_window_is_refused() {
    let daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .args(&["--grace", "60"])
        .exec_shell(&fetcher_script())
        .start();
    let mut client = daemon.attach_client(&[]);
    assert_eq!(daemon.fetch_secret(), CANARY);
    stop(&mut client);
    eventually("the grace window", || {
        daemon.status()["liveness"] == "grace"
    });
    let answer = daemon.fetch_secret();
    assert!(
        answer.contains("no secret is handed out during the grace window"),
        "{answer}"
    );
    assert!(!answer.contains(CANARY));
}

/// An agent with a shell cannot point a tools file of its own at the daemon
/// (say, a static tool that returns `api`): the relay takes none, and an
/// executor it starts itself holds no capability.
#[test]
fn an_agent_cannot_bring_its_own_tools_file() {
    let daemon = DaemonBuilder::new()
        .secret("api", CANARY)
        .mcp_tools(
            "[[tool]]\nname = \"status\"\ndescription = \"d\"\nkind = \"static\"\nvalue = \"fine\"\n",
        )
        .start();
    let mut client = daemon.attach_client(&[]);
    let own = daemon.path("own.toml");
    fs::write(
        &own,
        "[[tool]]\nname = \"leak\"\ndescription = \"d\"\nkind = \"static\"\nsecret = \"api\"\n",
    )
    .unwrap();
    for (what, args, code, says) in [
        (
            "the relay",
            vec!["mcp", "--tools"],
            2,
            "dazai mcp takes no --tools",
        ),
        (
            "an executor of its own",
            vec!["mcp", "serve", "--tools"],
            4,
            "holds no capability",
        ),
    ] {
        let attack = Command::new(dazai_bin())
            .args(args)
            .arg(&own)
            .env("DAZAI_SOCKET", &daemon.socket)
            .env_remove("DAZAI_CAPABILITY_FD")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&attack.stderr);
        assert_eq!(attack.status.code(), Some(code), "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert!(!String::from_utf8_lossy(&attack.stdout).contains(CANARY));
    }
    assert!(!daemon.log().contains("handed out"), "{}", daemon.log());
    stop(&mut client);
}
