//! Idle cost: what an armed daemon with nothing to do costs, read from
//! `/proc/PID/status` (every thread) — context switches over a window,
//! resident and locked memory at its end.
//!
//! The configurations run side by side over the same window: no ping
//! timeout (the daemon should sleep in `poll` without a timer), the
//! documented `--ping-timeout 30` (the client pings every 10 s), and
//! `--ping-timeout 3` (a ping a second, to show the cost of one).

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::dazai::{Dazai, Scratch};

/// The measured window.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// After the attach, before the window opens: start-up work is done.
const SETTLE: Duration = Duration::from_secs(1);
/// The configurations: `--ping-timeout` in seconds, or none.
const PING_TIMEOUTS: [Option<u64>; 3] = [None, Some(30), Some(3)];

/// Context switches of every thread of a process.
#[derive(Clone, Copy, Default)]
pub(crate) struct Switches {
    pub voluntary: u64,
    pub involuntary: u64,
}

impl Switches {
    fn since(self, before: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary.saturating_sub(before.voluntary),
            involuntary: self.involuntary.saturating_sub(before.involuntary),
        }
    }

    fn json(&self) -> Value {
        json!({ "voluntary": self.voluntary, "involuntary": self.involuntary })
    }
}

/// Memory of a process, in KiB, from `/proc/PID/status`.
#[derive(Clone, Copy, Default)]
pub(crate) struct Memory {
    pub rss_kib: u64,
    /// The private part of the RSS: heap, stacks, the secret pages.
    pub anon_kib: u64,
    /// Pages of mapped files (the binary, libc), shared with other processes.
    pub file_kib: u64,
    pub hwm_kib: u64,
    pub locked_kib: u64,
}

/// One configuration's figures.
pub(crate) struct Idle {
    pub ping_timeout: Option<u64>,
    pub daemon: Switches,
    pub client: Switches,
    pub memory: Memory,
    pub threads: usize,
    pub backend: String,
}

impl Idle {
    pub(crate) fn json(&self) -> Value {
        json!({
            "ping_timeout_s": self.ping_timeout,
            "window_s": WINDOW.as_secs(),
            "daemon_context_switches": self.daemon.json(),
            "client_context_switches": self.client.json(),
            "daemon_threads": self.threads,
            "vm_rss_kib": self.memory.rss_kib,
            "rss_anon_kib": self.memory.anon_kib,
            "rss_file_kib": self.memory.file_kib,
            "vm_hwm_kib": self.memory.hwm_kib,
            "vm_lck_kib": self.memory.locked_kib,
            "memory_backend": self.backend,
        })
    }
}

pub(crate) fn measure(dazai: &Dazai, scratch: &Scratch) -> Result<Vec<Idle>> {
    let mut held = Vec::new();
    for timeout in PING_TIMEOUTS {
        let dir = scratch.dir(&format!(
            "idle-{}",
            timeout.map_or("none".to_owned(), |t| t.to_string())
        ))?;
        let timeout_arg = timeout.map(|t| t.to_string());
        let args: Vec<&str> = match &timeout_arg {
            Some(t) => vec!["--ping-timeout", t],
            None => Vec::new(),
        };
        let daemon = dazai.start_daemon(&dir, &args)?;
        let client = dazai.attach_client(&daemon)?;
        held.push((timeout, daemon, client));
    }
    std::thread::sleep(SETTLE);
    let before = held
        .iter()
        .map(|(_, daemon, client)| Ok((switches(daemon.process.pid())?, switches(client.pid())?)))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(WINDOW);
    let mut figures = Vec::new();
    for ((timeout, daemon, client), (daemon_before, client_before)) in held.iter().zip(before) {
        let pid = daemon.process.pid();
        figures.push(Idle {
            ping_timeout: *timeout,
            daemon: switches(pid)?.since(daemon_before),
            client: switches(client.pid())?.since(client_before),
            memory: memory(pid)?,
            threads: threads(pid)?.len(),
            backend: daemon.memory_backend(),
        });
    }
    // Dropping `held` kills and reaps every daemon and client.
    Ok(figures)
}

fn threads(pid: u32) -> Result<Vec<String>> {
    let dir = format!("/proc/{pid}/task");
    fs::read_dir(&dir)
        .with_context(|| format!("read {dir}"))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// The sum over every thread of `voluntary_ctxt_switches` and
/// `nonvoluntary_ctxt_switches`.
fn switches(pid: u32) -> Result<Switches> {
    let mut total = Switches::default();
    for tid in threads(pid)? {
        let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
        total.voluntary += field(&status, "voluntary_ctxt_switches:")?;
        total.involuntary += field(&status, "nonvoluntary_ctxt_switches:")?;
    }
    Ok(total)
}

fn memory(pid: u32) -> Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(Memory {
        rss_kib: field(&status, "VmRSS:")?,
        anon_kib: field(&status, "RssAnon:")?,
        file_kib: field(&status, "RssFile:")?,
        hwm_kib: field(&status, "VmHWM:")?,
        locked_kib: field(&status, "VmLck:")?,
    })
}

/// The number after `name` on its line of a `/proc/…/status` file.
fn field(status: &str, name: &str) -> Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .with_context(|| format!("no {name} in /proc status"))
}

/// `VmRSS` of any process, for the anchor's side of the comparison.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    field(&status, "VmRSS:")
}
