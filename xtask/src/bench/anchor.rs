//! The anchor: `ssh-agent` in command mode (`ssh-agent sleep 1000`) holds keys
//! for as long as its command lives, the same "session gone → secret holder
//! gone" promise. In command mode ssh-agent forks: the parent execs the
//! command and the child, the agent, checks that its parent still exists
//! whenever its `poll` times out, every 10 s. It is measured like dazai: from
//! SIGKILL to the command to the agent's death, seen through a pidfd.
//!
//! The agents run side by side: each command is killed at a random moment of
//! its agent's 10-second cycle (a session can die at any time), so the run
//! takes about 20 s instead of `runs` × 5 s.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::dazai::{Scratch, PATIENCE};
use super::process::{DeathWatch, Pidfd, Watched};
use super::stats::Summary;

/// ssh-agent's parent check interval in command mode (`parent_alive_interval`).
const CHECK_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) struct Anchor {
    pub version: String,
    pub runs: usize,
    pub agent_gone: Summary,
    /// Agents that ended with ssh-agent's "parent gone" status, 2.
    pub exited_2: usize,
    pub rss_kib: u64,
    pub seed: u64,
}

impl Anchor {
    pub(crate) fn json(&self) -> Value {
        json!({
            "program": "ssh-agent (command mode: ssh-agent sleep 1000)",
            "version": self.version,
            "runs": self.runs,
            "agent_gone": self.agent_gone.json(),
            "agents_exited_with_2": self.exited_2,
            "agent_vm_rss_kib": self.rss_kib,
            "kill_offsets_seed": self.seed,
        })
    }
}

/// One `ssh-agent sleep 1000`: the command (the bench's child) and its agent.
struct Session {
    command: Watched,
    agent_pid: u32,
    agent: Pidfd,
    kill_at: Instant,
}

pub(crate) fn measure(scratch: &Scratch, runs: usize) -> Result<Anchor> {
    let version = ssh_version()?;
    // Orphaned agents are re-parented to the bench, which can then reap them
    // (and tell their exit status) instead of leaving that to init.
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    let dir = scratch.dir("anchor")?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64)
        | 1;
    let mut random = XorShift(seed);

    let mut sessions = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        let command = Watched::spawn(
            Command::new("ssh-agent")
                .arg("-a")
                .arg(dir.join(format!("agent.{run}")))
                .args(["sleep", "1000"])
                .env_remove("SSH_AGENT_PID")
                .env_remove("SSH_AUTH_SOCK")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let agent_pid = agent_of(&command)?;
        let agent = Pidfd::open(agent_pid)?;
        let offset = CHECK_INTERVAL.mul_f64(random.unit());
        sessions.push(Session {
            command,
            agent_pid,
            agent,
            kill_at: started + offset,
        });
    }
    let rss_kib = super::idle::rss_kib(sessions[0].agent_pid).unwrap_or(0);

    let mut order: Vec<usize> = (0..sessions.len()).collect();
    order.sort_by_key(|&i| sessions[i].kill_at);
    let mut killed = vec![None; sessions.len()];
    let mut watch = DeathWatch::new(sessions.iter().map(|s| &s.agent));
    let give_up = Instant::now() + CHECK_INTERVAL * 2 + PATIENCE;
    for &i in &order {
        watch.wait(sessions[i].kill_at)?;
        killed[i] = Some(Instant::now());
        sessions[i].command.kill()?;
    }
    watch.wait(give_up)?;

    let mut gone = Vec::new();
    for (i, seen) in watch.seen().iter().enumerate() {
        match (seen, killed[i]) {
            (Some(died), Some(killed)) => gone.push(died.saturating_duration_since(killed)),
            _ => bail!(
                "ssh-agent pid {} outlived its command by more than {} s",
                sessions[i].agent_pid,
                (CHECK_INTERVAL * 2 + PATIENCE).as_secs()
            ),
        }
    }
    let mut exited_2 = 0;
    for session in &mut sessions {
        session.command.reap()?;
        if let Ok(WaitStatus::Exited(_, 2)) = waitpid(Pid::from_raw(session.agent_pid as i32), None)
        {
            exited_2 += 1;
        }
    }
    Ok(Anchor {
        version,
        runs,
        agent_gone: Summary::of_durations(gone),
        exited_2,
        rss_kib,
        seed,
    })
}

/// The agent's pid, once the command has exec'd: ssh-agent puts it in the
/// command's environment as `SSH_AGENT_PID`.
fn agent_of(command: &Watched) -> Result<u32> {
    let started = Instant::now();
    let pid = command.pid();
    loop {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "sleep" {
            let environ = fs::read(format!("/proc/{pid}/environ"))?;
            let agent = environ
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(b"SSH_AGENT_PID="))
                .and_then(|pid| std::str::from_utf8(pid).ok()?.parse().ok());
            if let Some(agent) = agent {
                return Ok(agent);
            }
        }
        if started.elapsed() > PATIENCE || command.pidfd.has_exited() {
            bail!("ssh-agent (pid {pid}) did not start its command");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ssh_version() -> Result<String> {
    // `ssh -V` prints to stderr; ssh-agent has no version flag of its own.
    let output = Command::new("ssh")
        .arg("-V")
        .output()
        .context("run ssh -V (install openssh-client)")?;
    Ok(String::from_utf8_lossy(&output.stderr).trim().to_owned())
}

/// Kill offsets need no more than a small, seeded generator.
struct XorShift(u64);

impl XorShift {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Kills every agent still alive when the bench fails half-way.
impl Drop for Session {
    fn drop(&mut self) {
        if !self.agent.has_exited() {
            let _ = kill(Pid::from_raw(self.agent_pid as i32), Signal::SIGKILL);
        }
    }
}
