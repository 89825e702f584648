//! Ping-timeout precision: a daemon with `--ping-timeout 1` and a heartbeat
//! that stops pinging. The bench holds the heartbeat itself, on the raw
//! protocol, so that it knows when the last `PING` was answered: a real
//! `dazai client` stopped with SIGSTOP would leave that instant uncertain by up
//! to its ping interval (a third of the timeout).
//!
//! The error is the daemon's observed death minus (`PONG` received + 1 s).
//! The daemon's own deadline starts when it reads the `PING`, at most one
//! round trip before the `PONG` arrives; the round trip is reported too.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::dazai::{Dazai, Scratch, PATIENCE};
use super::process::DeathWatch;
use super::stats::{micros, Summary};

/// The `--ping-timeout` measured, in seconds (the smallest the daemon takes).
pub(crate) const TIMEOUT_SECS: u64 = 1;

pub(crate) struct PingTimeout {
    pub runs: usize,
    /// Observed death minus the configured deadline.
    pub error: Summary,
    /// PING sent to PONG received: the uncertainty of the deadline's start.
    pub round_trip: Summary,
}

impl PingTimeout {
    pub(crate) fn json(&self) -> Value {
        json!({
            "ping_timeout_s": TIMEOUT_SECS,
            "runs": self.runs,
            "error": self.error.json(),
            "ping_round_trip": self.round_trip.json(),
        })
    }
}

pub(crate) fn measure(dazai: &Dazai, scratch: &Scratch, runs: usize) -> Result<PingTimeout> {
    let mut errors = Vec::new();
    let mut round_trips = Vec::new();
    for run in 0..runs {
        let (error, round_trip) = one_run(dazai, scratch, run)?;
        errors.push(error);
        round_trips.push(micros(round_trip));
    }
    Ok(PingTimeout {
        runs,
        error: Summary::of_micros(errors),
        round_trip: Summary::of_micros(round_trips),
    })
}

/// One silent heartbeat; returns the error (µs, may be negative by up to a
/// round trip) and the PING round trip.
fn one_run(dazai: &Dazai, scratch: &Scratch, run: usize) -> Result<(i64, Duration)> {
    let dir = scratch.dir(&format!("ping-{run}"))?;
    let timeout = TIMEOUT_SECS.to_string();
    let mut daemon = dazai.start_daemon(&dir, &["--ping-timeout", &timeout])?;
    // Held until the daemon is dead: closing it would be a different panic.
    let stream = UnixStream::connect(&daemon.socket).context("connect for the heartbeat")?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    (&stream).write_all(b"dazai/1 HEARTBEAT\n")?;
    let attached = read_reply(&mut reader)?;
    if !attached.starts_with("OK heartbeat attached") {
        bail!("HEARTBEAT answered {attached:?}");
    }
    let sent = Instant::now();
    (&stream).write_all(b"PING\n")?;
    let pong = read_reply(&mut reader)?;
    let answered = Instant::now();
    if pong != "PONG" {
        bail!("PING answered {pong:?}");
    }
    // From here on the heartbeat is silent: a stopped client.
    let mut watch = DeathWatch::new([&daemon.process.pidfd]);
    watch.wait_all(
        Duration::from_secs(TIMEOUT_SECS) + PATIENCE,
        "daemon after its ping timeout",
    )?;
    let died = watch.seen()[0].context("the daemon's death")?;
    let status = daemon.process.reap()?;
    if status.signal() != Some(libc::SIGKILL) {
        bail!("the daemon ended with {status}, not by its own SIGKILL");
    }
    if !daemon.log().contains("no PING for") {
        bail!(
            "the daemon panicked for another reason; log: {}",
            daemon.log().trim()
        );
    }
    drop(stream);
    let _ = std::fs::remove_dir_all(&dir);
    let deadline = answered + Duration::from_secs(TIMEOUT_SECS);
    let error = if died >= deadline {
        micros(died - deadline)
    } else {
        -micros(deadline - died)
    };
    Ok((error, answered - sent))
}

fn read_reply(reader: &mut BufReader<UnixStream>) -> Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line).context("read a reply")?;
    Ok(line.trim_end().to_owned())
}
