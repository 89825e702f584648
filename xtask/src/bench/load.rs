//! Heartbeat under load: while a real `dazai client` holds the heartbeat (with
//! a ping timeout, so a starved heartbeat would panic), the bench makes
//! 10 000 connection attempts from several threads: second heartbeats
//! (`BUSY`), garbage lines and over-long lines (`ERR`). The heartbeat must
//! never be lost: afterwards the same client still holds it, and neither it
//! nor the daemon has died.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::dazai::{Dazai, Scratch, PATIENCE};

pub(crate) const ATTEMPTS: usize = 10_000;
/// Threads making attempts at once (the daemon is single-threaded).
pub(crate) const WORKERS: usize = 4;
/// The heartbeat's ping timeout during the flood: the client pings every second.
const PING_TIMEOUT: &str = "3";

/// What the attempts sent, in turn.
const KINDS: [(&str, &[u8]); 3] = [
    ("second heartbeat", b"dazai/1 HEARTBEAT\n"),
    ("garbage", b"\x01\x7f GET / HTTP/1.1\r\n"),
    ("over-long line", &[b'A'; 300]),
];

/// How the attempts ended.
#[derive(Default, Clone, Copy)]
pub(crate) struct Outcomes {
    pub busy: usize,
    pub err: usize,
    /// Closed or reset without a reply line.
    pub no_reply: usize,
    /// Anything else: a bug.
    pub unexpected: usize,
}

pub(crate) struct Load {
    pub elapsed: Duration,
    pub outcomes: Outcomes,
    pub heartbeat_kept: bool,
}

impl Load {
    pub(crate) fn attempts_per_second(&self) -> f64 {
        ATTEMPTS as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "attempts": ATTEMPTS,
            "workers": WORKERS,
            "kinds": KINDS.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            "elapsed_us": super::stats::micros(self.elapsed),
            "attempts_per_s": self.attempts_per_second().round(),
            "busy": self.outcomes.busy,
            "err": self.outcomes.err,
            "closed_without_reply": self.outcomes.no_reply,
            "unexpected": self.outcomes.unexpected,
            "heartbeat_kept": self.heartbeat_kept,
        })
    }
}

pub(crate) fn measure(dazai: &Dazai, scratch: &Scratch) -> Result<Load> {
    let dir = scratch.dir("load")?;
    let daemon = dazai.start_daemon(&dir, &["--ping-timeout", PING_TIMEOUT])?;
    let client = dazai.attach_client(&daemon)?;

    let started = Instant::now();
    let per_worker: Vec<Result<Outcomes>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let socket = daemon.socket.as_path();
                scope.spawn(move || flood(socket, worker))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| bail!("a load worker panicked")))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut outcomes = Outcomes::default();
    for worker in per_worker {
        let o = worker?;
        outcomes.busy += o.busy;
        outcomes.err += o.err;
        outcomes.no_reply += o.no_reply;
        outcomes.unexpected += o.unexpected;
    }

    let still_alive = !client.pidfd.has_exited() && !daemon.process.pidfd.has_exited();
    let heartbeat_kept = still_alive && daemon.heartbeat_pid()? == Some(client.pid());
    if !heartbeat_kept {
        bail!(
            "the heartbeat was lost under load; daemon log: {}",
            daemon.log().trim()
        );
    }
    Ok(Load {
        elapsed,
        outcomes,
        heartbeat_kept,
    })
}

/// One worker's share of the attempts, one connection each, in turn.
fn flood(socket: &Path, worker: usize) -> Result<Outcomes> {
    let mut outcomes = Outcomes::default();
    for attempt in (worker..ATTEMPTS).step_by(WORKERS) {
        let (_, request) = KINDS[attempt % KINDS.len()];
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        let mut reply = Vec::new();
        let sent = stream.write_all(request);
        let read = stream.read_to_end(&mut reply);
        match (sent, read) {
            _ if reply.starts_with(b"BUSY ") => outcomes.busy += 1,
            _ if reply.starts_with(b"ERR ") => outcomes.err += 1,
            (Err(e), _) | (_, Err(e))
                if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
            {
                outcomes.no_reply += 1
            }
            _ => outcomes.unexpected += 1,
        }
    }
    Ok(outcomes)
}
