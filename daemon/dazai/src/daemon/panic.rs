//! The panic: the one sequence the whole product exists for.

use std::fmt;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::getpid;

use super::registry::Registry;
use super::secrets::Vault;
use super::supervisor::Supervised;
use crate::log::Log;

/// Why the panic runs.
#[derive(Clone, Debug)]
pub enum PanicReason {
    /// The heartbeat connection closed (client killed, session dropped).
    HeartbeatClosed,
    /// The heartbeat connection sent something other than `PING` (fail closed).
    HeartbeatGarbage,
    /// No `PING` within `--ping-timeout`.
    PingTimeout(Duration),
    /// No heartbeat attached within `--arm-timeout`.
    ArmTimeout(Duration),
    /// A panic signal (SIGUSR1, SIGUSR2, SIGHUP), or one that would end the
    /// daemon and that it never uses (SIGQUIT, SIGALRM, …).
    Signal(Signal),
    /// A `PANIC` request from a client.
    Request {
        /// The requesting process.
        pid: i32,
        /// Whether the grace window was bypassed.
        hard: bool,
    },
    /// The supervised program was killed by a signal (the OOM killer, a crash).
    ChildKilled(Signal),
    /// The grace window ran out after the session was lost.
    GraceExpired(Box<PanicReason>),
}

impl fmt::Display for PanicReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeartbeatClosed => write!(f, "heartbeat connection closed"),
            Self::HeartbeatGarbage => write!(f, "heartbeat connection sent garbage"),
            Self::PingTimeout(t) => write!(f, "no PING for {}s (--ping-timeout)", t.as_secs()),
            Self::ArmTimeout(t) => {
                write!(f, "no heartbeat within {}s (--arm-timeout)", t.as_secs())
            }
            Self::Signal(signal) => write!(f, "{signal}"),
            Self::Request { pid, hard } => {
                write!(
                    f,
                    "PANIC{} request from pid {pid}",
                    if *hard { " HARD" } else { "" }
                )
            }
            Self::ChildKilled(signal) => write!(f, "supervised program killed by {signal}"),
            Self::GraceExpired(cause) => write!(f, "grace window expired after: {cause}"),
        }
    }
}

/// Wipes every secret, kills every registered process and the supervised
/// tree, logs one line, and SIGKILLs the daemon. Never returns.
pub fn panic_sequence(
    reason: &PanicReason,
    registry: &Registry,
    supervised: Option<&mut Supervised>,
    vault: &mut Vault,
    log: &Log,
) -> ! {
    // 1. Wipe every secret first: microseconds, and nothing a kill sets off
    //    can then end the daemon before it.
    let wiped = vault.wipe_all();
    // 2. Kill every process that could have been given a secret.
    let registered_killed = registry.kill_all();
    let tree = supervised.map(Supervised::kill_all);
    // 3. One line saying why and what was done.
    let tree = tree.map_or_else(|| "none".to_owned(), |kill| kill.to_string());
    log.always(format_args!(
        "PANIC: {reason}; killed registered {registered_killed:?} and supervised {tree}; wiped {wiped} secrets; SIGKILL self"
    ));
    // 4. End without running anything else: no destructor, no atexit handler.
    let _ = kill(getpid(), Signal::SIGKILL);
    std::process::abort()
}
