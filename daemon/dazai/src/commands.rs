//! The control subcommands: `client`, `status`, `panic`, `stop`, `get`, `register`.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use dazai_client::connection::unexpected;
use dazai_client::protocol::{Reply, Request};
use dazai_client::{hold_heartbeat, Capability, Connection, HeartbeatEnd, HeartbeatOptions};
use serde_json::Value;

use crate::cli::{ClientArgs, GetArgs, PanicArgs, RegisterArgs, StatusArgs, StopArgs};
use crate::failure::{Exit, Failure};

/// `dazai client`: holds the heartbeat until the session ends.
pub fn client(args: &ClientArgs) -> Result<u8, Failure> {
    let options = HeartbeatOptions {
        ping_interval: args.ping_interval.map(Duration::from_secs),
        relay_signals_to: None,
        standby: args.standby,
    };
    let end = hold_heartbeat(&args.socket.path(), options)?;
    let why = match end {
        HeartbeatEnd::Signal(signal) => format!("{signal}"),
        HeartbeatEnd::SessionHungUp(stream) => format!("{stream} hung up"),
        HeartbeatEnd::ParentGone => "parent process gone".to_owned(),
    };
    // The session's terminal may be gone already: a failed write is no error.
    let _ = writeln!(
        std::io::stderr(),
        "dazai: session ended ({why}); heartbeat released"
    );
    Ok(0)
}

/// `dazai status`: human summary, or the daemon's JSON with `--json`.
pub fn status(args: &StatusArgs) -> Result<u8, Failure> {
    let json = match Connection::open(&args.socket.path())?.request(&Request::Status)? {
        Reply::Status(json) => json,
        other => return Err(unexpected(other).into()),
    };
    if args.json {
        println!("{json}");
        return Ok(0);
    }
    let status: Value =
        serde_json::from_str(&json).map_err(|e| Failure::internal("unreadable status", e))?;
    print!("{}", human_status(&status));
    Ok(0)
}

/// A compact, human view of the status JSON.
fn human_status(status: &Value) -> String {
    let mut out = String::new();
    let field = |key: &str| status[key].to_string().trim_matches('"').to_owned();
    out.push_str(&format!(
        "daemon pid {}: {}{}\n",
        field("pid"),
        field("liveness"),
        if status["armed"] == true {
            " (armed)"
        } else {
            " (not armed)"
        }
    ));
    if let Some(heartbeat) = status["heartbeat"].as_object() {
        out.push_str(&format!(
            "heartbeat: pid {} since {}\n",
            heartbeat["pid"],
            heartbeat["since"].as_str().unwrap_or("?")
        ));
    }
    if let Some(standbys) = status["standbys"].as_array().filter(|s| !s.is_empty()) {
        let pids: Vec<String> = standbys.iter().map(Value::to_string).collect();
        out.push_str(&format!(
            "standing by: pid {}
",
            pids.join(", pid ")
        ));
    }
    out.push_str(&format!(
        "ping timeout: {}  grace: {}s  arm timeout: {}\n",
        secs_or_none(&status["ping_timeout_secs"]),
        field("grace_secs"),
        secs_or_none(&status["arm_timeout_secs"])
    ));
    for secret in status["secrets"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "secret {}: {} bytes, {}\n",
            secret["name"].as_str().unwrap_or("?"),
            secret["bytes"],
            secret["backend"].as_str().unwrap_or("?")
        ));
    }
    out.push_str(&format!(
        "memory: {} ({})\n",
        status["memory"].as_str().unwrap_or("?"),
        status["memory_note"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        "registered: {}  locked memory: {} bytes  seccomp: {}\n",
        status["registered"],
        field("locked_bytes"),
        field("seccomp")
    ));
    if let Some(supervised) = status["supervised"].as_object() {
        out.push_str(&format!(
            "supervised: pid {} (group {}, killed by {})\n",
            supervised["pid"],
            supervised["pgid"],
            supervised["kill"].as_str().unwrap_or("?")
        ));
    }
    out
}

fn secs_or_none(value: &Value) -> String {
    value
        .as_u64()
        .map_or("none".to_owned(), |secs| format!("{secs}s"))
}

/// `dazai panic`.
pub fn panic(args: &PanicArgs) -> Result<u8, Failure> {
    let request = Request::Panic { hard: args.hard };
    match Connection::open(&args.socket.path())?.request(&request)? {
        Reply::Ok(_) => Ok(0),
        other => Err(unexpected(other).into()),
    }
}

/// `dazai stop`.
pub fn stop(args: &StopArgs) -> Result<u8, Failure> {
    match Connection::open(&args.socket.path())?.request(&Request::Stop)? {
        Reply::Ok(_) => Ok(0),
        other => Err(unexpected(other).into()),
    }
}

/// `dazai get NAME`: the secret's bytes on stdout, straight from locked
/// memory with `write(2)`: std's buffered stdout would leave a copy on the heap.
pub fn get(args: &GetArgs) -> Result<u8, Failure> {
    let secret = Capability::inherited()?.fetch_secret(&args.name)?;
    write_unbuffered(std::io::stdout().as_fd(), secret.expose()).map_err(|e| {
        Failure::new(
            Exit::Internal,
            format!("cannot write the secret to stdout ({e}); fix: give `dazai get` a stdout that takes all of it (a pipe or a file), not a closed one"),
        )
    })?;
    Ok(0)
}

/// Writes all of `bytes` to `fd` with `write(2)`, retrying short writes and `EINTR`.
fn write_unbuffered(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// `dazai register [PID]`.
pub fn register(args: &RegisterArgs) -> Result<u8, Failure> {
    let pid = args.pid.unwrap_or_else(|| nix::unistd::getppid().as_raw());
    match Connection::open(&args.socket.path())?.request(&Request::Register { pid: Some(pid) })? {
        Reply::Ok(text) => {
            println!("{text}");
            Ok(0)
        }
        other => Err(unexpected(other).into()),
    }
}
