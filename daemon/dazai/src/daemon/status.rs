//! What the daemon reports about itself: the hardening it achieved at
//! start-up and the `STATUS` reply (JSON, documented in `docs/protocol.md`).

use std::fmt::Display;

use goodnight::LockPolicy;
use serde::Serialize;

use crate::failure::{Exit, Failure};

/// The outcome of each hardening step, in start-up order.
#[derive(Clone, Debug, Serialize)]
pub struct Hardening {
    /// One line per step: what it achieved, or (insecure mode) why it failed.
    pub steps: Vec<String>,
    /// Whether `--insecure-allow-unlocked` is in force.
    pub insecure: bool,
}

impl Hardening {
    /// An empty record under `policy`.
    pub fn new(policy: LockPolicy) -> Self {
        Self {
            steps: Vec::new(),
            insecure: policy == LockPolicy::InsecureAllowUnlocked,
        }
    }

    /// Records a step's report; a failed step stops start-up unless insecure
    /// mode was asked for, in which case it is recorded loudly.
    pub fn record<R: Display, E: Display>(&mut self, step: Result<R, E>) -> Result<(), Failure> {
        match step {
            Ok(report) => self.steps.push(report.to_string()),
            Err(error) if self.insecure => self.steps.push(format!("INSECURE: {error}")),
            Err(error) => {
                return Err(Failure::new(
                    Exit::Hardening,
                    format!(
                        "{error}; or pass --insecure-allow-unlocked to run without this protection"
                    ),
                ))
            }
        }
        Ok(())
    }
}

/// The `STATUS` reply.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Protocol version token.
    pub protocol: &'static str,
    /// The daemon's pid.
    pub pid: u32,
    /// Whether a heartbeat has ever attached.
    pub armed: bool,
    /// `waiting` (not armed), `attached`, `grace` (session lost, waiting for a re-attach).
    pub liveness: &'static str,
    /// The attached heartbeat, if any.
    pub heartbeat: Option<HeartbeatStatus>,
    /// Pids of the heartbeats standing by to take it over, in order.
    pub standbys: Vec<i32>,
    /// Seconds left in the grace window, while in it.
    pub grace_left_secs: Option<f64>,
    /// `--ping-timeout`.
    pub ping_timeout_secs: Option<u64>,
    /// `--grace`.
    pub grace_secs: u64,
    /// `--arm-timeout`.
    pub arm_timeout_secs: Option<u64>,
    /// The secrets held (never their values).
    pub secrets: Vec<SecretStatus>,
    /// The memory backend holding the secrets: `secretmem`, `locked` or
    /// `UNLOCKED (insecure)`.
    pub memory: String,
    /// Why that backend, e.g. "chosen automatically: memfd_secret(2) is
    /// available", "secretmem unavailable: kernel booted without
    /// secretmem.enable=1" or "locked requested; secretmem not tried; set by
    /// --memory locked".
    pub memory_note: String,
    /// Bytes of secret memory held locked.
    pub locked_bytes: usize,
    /// Registered processes that are alive.
    pub registered: Vec<i32>,
    /// `GET`s through the capability that wait for the switch to be armed.
    pub waiting_gets: usize,
    /// The `--exec` child, if any.
    pub supervised: Option<SupervisedStatus>,
    /// `on (N syscalls allowed)` or `off`.
    pub seccomp: String,
    /// Start-up hardening.
    pub hardening: Hardening,
}

/// The attached heartbeat.
#[derive(Debug, Serialize)]
pub struct HeartbeatStatus {
    /// The client's pid (from SO_PEERCRED).
    pub pid: i32,
    /// When it attached, RFC 3339 UTC.
    pub since: String,
}

/// One held secret.
#[derive(Debug, Serialize)]
pub struct SecretStatus {
    /// Its name.
    pub name: String,
    /// Its length in bytes.
    pub bytes: usize,
    /// The memory backend holding it.
    pub backend: String,
    /// Whether its pages are locked in RAM.
    pub locked: bool,
}

/// The supervised child.
#[derive(Debug, Serialize)]
pub struct SupervisedStatus {
    /// The program's pid.
    pub pid: i32,
    /// Its process group.
    pub pgid: i32,
    /// How the panic reaches its tree.
    pub kill: &'static str,
    /// Why no cgroup is used, when none is.
    pub cgroup_unavailable: Option<String>,
}
