//! The wire protocol against a live daemon: a transcript per exchange
//! (the snapshots `docs/protocol.md` shows), and bad input that gets its
//! documented reply while the heartbeat survives.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use dazai_e2e::{Daemon, DaemonBuilder, Implementation};

/// Writes `request` on a new connection and returns a transcript of the
/// exchange with run-specific numbers (pids, times) replaced.
fn transcript(daemon: &Daemon, request: &[u8]) -> String {
    let reply = daemon.exchange(request);
    let shown_request = String::from_utf8_lossy(request);
    let mut text = String::new();
    for line in shown_request.lines() {
        text.push_str(&format!("> {line}\n"));
    }
    for line in reply.lines() {
        text.push_str(&format!("< {line}\n"));
    }
    redact_run_specific(&text)
}

fn redact_run_specific(text: &str) -> String {
    let mut parts = text.split("pid ");
    let mut out = parts.next().unwrap_or_default().to_owned();
    for part in parts {
        out.push_str("pid PID");
        out.push_str(part.trim_start_matches(|c: char| c.is_ascii_digit()));
    }
    out
}

/// Holds a heartbeat on a raw connection for the duration of a test.
fn hold_heartbeat(daemon: &Daemon) -> UnixStream {
    let mut heartbeat = daemon.connect();
    heartbeat.write_all(b"dazai/1 HEARTBEAT\n").unwrap();
    let mut reply = [0u8; 64];
    let n = heartbeat.read(&mut reply).unwrap();
    assert!(reply[..n].starts_with(b"OK heartbeat attached"));
    heartbeat
}

/// The heartbeat still answers and the daemon still holds its secret.
fn assert_heartbeat_survives(daemon: &Daemon, heartbeat: &mut UnixStream) {
    heartbeat.write_all(b"PING\n").unwrap();
    let mut reply = [0u8; 5];
    heartbeat.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"PONG\n");
    let status = daemon.status();
    assert_eq!(status["liveness"], "attached");
    assert_eq!(status["secrets"][0]["bytes"], 6);
}

#[test]
fn heartbeat_transcript() {
    let daemon = DaemonBuilder::new().args(&["--ping-timeout", "9"]).start();
    let mut stream = daemon.connect();
    stream
        .write_all(b"dazai/1 HEARTBEAT\nPING\nPING\n")
        .unwrap();
    let mut reply = vec![0u8; 256];
    let mut got = 0;
    while !String::from_utf8_lossy(&reply[..got]).ends_with("PONG\nPONG\n") {
        got += stream.read(&mut reply[got..]).unwrap();
    }
    let text = format!(
        "> dazai/1 HEARTBEAT\n> PING\n> PING\n{}",
        String::from_utf8_lossy(&reply[..got])
            .lines()
            .map(|l| format!("< {l}\n"))
            .collect::<String>()
    );
    insta::assert_snapshot!(redact_run_specific(&text));
}

#[test]
fn busy_transcript() {
    let daemon = DaemonBuilder::new().start();
    let _heartbeat = hold_heartbeat(&daemon);
    insta::assert_snapshot!(transcript(&daemon, b"dazai/1 HEARTBEAT\n"));
}

/// A second login stands by, and its connection becomes the heartbeat when
/// the first one's closes: two lines on one connection.
#[test]
fn standby_transcript() {
    let daemon = DaemonBuilder::new()
        .args(&["--grace", "30", "--ping-timeout", "9"])
        .start();
    let first = hold_heartbeat(&daemon);
    let mut standby = daemon.connect();
    standby.write_all(b"dazai/1 HEARTBEAT STANDBY\n").unwrap();
    let mut reply = Vec::new();
    let mut chunk = [0u8; 256];
    while reply.iter().filter(|&&b| b == b'\n').count() < 1 {
        let n = standby.read(&mut chunk).unwrap();
        reply.extend_from_slice(&chunk[..n]);
    }
    drop(first);
    while reply.iter().filter(|&&b| b == b'\n').count() < 2 {
        let n = standby.read(&mut chunk).unwrap();
        assert!(n > 0, "the daemon closed the standby connection");
        reply.extend_from_slice(&chunk[..n]);
    }
    let text = format!(
        "> dazai/1 HEARTBEAT STANDBY\n{}",
        String::from_utf8_lossy(&reply)
            .lines()
            .map(|l| format!("< {l}\n"))
            .collect::<String>()
    );
    insta::assert_snapshot!(redact_run_specific(&text));
}

#[test]
fn status_transcript() {
    let daemon = DaemonBuilder::new()
        .secret("api", "secret")
        // A fixed backend: the automatic one depends on the kernel.
        .args(&["--grace", "5", "--ping-timeout", "30", "--memory", "locked"])
        .start();
    let status = daemon.status();
    assert!(
        !status.to_string().contains("\"secret\""),
        "status never shows a value"
    );
    let mut redacted = status.clone();
    redacted["pid"] = "PID".into();
    redacted["hardening"]["steps"] = "…".into();
    redacted["seccomp"] = "on|off".into();
    let transcript = format!(
        "> dazai/1 STATUS\n< STATUS {}",
        serde_json::to_string_pretty(&redacted).unwrap()
    );
    match Implementation::chosen() {
        Implementation::Rust => insta::assert_snapshot!(transcript),
        // The reference says what it is and what it lacks: a snapshot of its own.
        Implementation::Python => {
            insta::with_settings!({ snapshot_suffix => "python-reference" }, {
                insta::assert_snapshot!(transcript)
            })
        }
    }
}

#[test]
fn register_and_get_transcripts() {
    let daemon = DaemonBuilder::new().secret("api", "secret").start();
    let refused = transcript(&daemon, b"dazai/1 GET api\n");
    // Registering opts this test process into the panic's kills, and grants
    // nothing: the GET that follows is refused as before.
    let register = transcript(&daemon, b"dazai/1 REGISTER\n");
    let still_refused = transcript(&daemon, b"dazai/1 GET api\n");
    insta::assert_snapshot!(format!("{refused}\n{register}\n{still_refused}"));
}

/// The supervised program speaks the protocol on the capability itself: one
/// message per request, carrying the socket its reply arrives on.
const CAPABILITY_CLIENT: &str = r#"
import os, socket
capability = socket.socket(fileno=int(os.environ["DAZAI_CAPABILITY_FD"]))
transcript = []
for request in [b"dazai/1 GET api\n", b"dazai/1 GET nope\n", b"dazai/1 STATUS\n"]:
    ours, theirs = socket.socketpair()
    socket.send_fds(capability, [request], [theirs.fileno()])
    theirs.close()
    reply = b""
    while chunk := ours.recv(4096):
        reply += chunk
    transcript.append("> " + request.decode().strip())
    transcript.append("< " + reply.decode().replace("\n", "\n< ").rstrip("< \n"))
with open(os.environ["DIR"] + "/transcript.part", "w") as out:
    out.write("\n".join(transcript) + "\n")
os.rename(os.environ["DIR"] + "/transcript.part", os.environ["DIR"] + "/transcript")
"#;

#[test]
fn capability_transcript() {
    let daemon = DaemonBuilder::new()
        .secret("api", "secret")
        .exec(&["python3", "-c", CAPABILITY_CLIENT])
        .start();
    let _heartbeat = hold_heartbeat(&daemon);
    dazai_e2e::eventually("the program's exchanges", || {
        dazai_e2e::exists(&daemon.path("transcript"))
    });
    let text = std::fs::read_to_string(daemon.path("transcript")).unwrap();
    insta::assert_snapshot!(redact_run_specific(&text));
}

#[test]
fn panic_transcript() {
    let mut daemon = DaemonBuilder::new().secret("api", "secret").start();
    let panic = transcript(&daemon, b"dazai/1 PANIC\n");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&daemon.wait_exit()),
        Some(9)
    );
    insta::assert_snapshot!(panic);
}

#[test]
fn malformed_requests_get_err_and_the_heartbeat_survives() {
    let daemon = DaemonBuilder::new().secret("api", "secret").start();
    let mut heartbeat = hold_heartbeat(&daemon);
    let overlong = [b"dazai/1 GET ".as_slice(), &[b'a'; 400], b"\n"].concat();
    let cases: [(&str, &[u8]); 7] = [
        ("overlong line", &overlong),
        ("binary garbage", b"\x00\xff\xfe\x01garbage\n"),
        ("NUL bytes", b"dazai/1 STATUS\0\n"),
        ("unknown command", b"dazai/1 FLY\n"),
        ("wrong version", b"dazai/9 STATUS\n"),
        ("no version", b"STATUS\n"),
        ("bad arguments", b"dazai/1 PANIC SOFTLY\n"),
    ];
    let mut transcripts = String::new();
    for (what, request) in cases {
        let reply = daemon.exchange(request);
        assert!(reply.starts_with("ERR "), "{what}: {reply:?}");
        assert_eq!(reply.lines().count(), 1, "{what}: one line");
        transcripts.push_str(&format!("{what}: {reply}"));
        assert_heartbeat_survives(&daemon, &mut heartbeat);
    }
    insta::assert_snapshot!(transcripts);
}

#[test]
fn a_flood_of_connections_gets_replies_and_the_heartbeat_survives() {
    let daemon = DaemonBuilder::new().secret("api", "secret").start();
    let mut heartbeat = hold_heartbeat(&daemon);
    let mut answered = 0;
    for round in 0..1000 {
        let request: &[u8] = if round % 2 == 0 {
            b"dazai/1 HEARTBEAT\n"
        } else {
            b"\x07\x07\x07\n"
        };
        let reply = daemon.exchange(request);
        assert!(
            reply.starts_with("BUSY ") || reply.starts_with("ERR "),
            "round {round}: {reply:?}"
        );
        answered += 1;
    }
    assert_eq!(answered, 1000);
    assert_heartbeat_survives(&daemon, &mut heartbeat);
}

#[test]
fn a_stalled_control_connection_is_dropped_after_its_deadline() {
    let daemon = DaemonBuilder::new().secret("api", "secret").start();
    let mut heartbeat = hold_heartbeat(&daemon);
    let mut slow = daemon.connect();
    slow.write_all(b"dazai/1 STA").unwrap(); // and then nothing

    let mut reply = String::new();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    slow.read_to_string(&mut reply).unwrap();

    assert!(
        reply.starts_with("ERR timeout: no complete request"),
        "{reply:?}"
    );
    assert_heartbeat_survives(&daemon, &mut heartbeat);
}

#[test]
fn docs_protocol_shows_every_transcript_snapshot() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let doc = std::fs::read_to_string(format!("{root}/docs/protocol.md")).unwrap();
    let snapshots = std::fs::read_dir(format!("{root}/tests/tests/snapshots")).unwrap();
    let mut checked = 0;
    for entry in snapshots {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("protocol__") || !name.ends_with(".snap") {
            continue;
        }
        let snapshot = std::fs::read_to_string(&path).unwrap();
        let body = snapshot.split_once("\n---\n").unwrap().1.trim();
        assert!(
            doc.contains(body),
            "docs/protocol.md lacks the transcript of {name}"
        );
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} transcripts found");
}
