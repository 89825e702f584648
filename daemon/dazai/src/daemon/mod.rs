//! `dazai daemon`: start-up in the order of SPEC.md §4, then the event loop.

pub mod endpoint;
mod event_loop;
mod panic;
pub mod registry;
pub mod secrets;
mod status;
pub mod supervisor;

use std::io::Write;
use std::time::Duration;

use goodnight::LockPolicy;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::cli::DaemonArgs;
use crate::confinement;
use crate::failure::{Exit, Failure};
use crate::log::Log;

use endpoint::Endpoint;
use event_loop::{EventLoop, Timeouts};
use secrets::Vault;
use status::Hardening;
use supervisor::Supervised;

/// Signals the daemon acts on; blocked at once and read from a signalfd in the
/// loop, so no work is ever done inside a signal handler and none is lost
/// during start-up.
fn daemon_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ] {
        set.add(signal);
    }
    set
}

/// Runs the daemon; returns only on failure at start-up or on a clean exit
/// (its exit code). The panic never returns.
pub fn run(args: DaemonArgs) -> Result<u8, Failure> {
    let policy = if args.insecure_allow_unlocked {
        LockPolicy::InsecureAllowUnlocked
    } else {
        LockPolicy::Required
    };
    end_rust_panics_in_sigabrt();
    let signals = daemon_signals();
    signals
        .thread_block()
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot block signals ({e})")))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot create a signalfd ({e})")))?;
    let log = Log::to_stderr()
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot open the log ({e})")))?;

    let mut hardening = Hardening::new(policy);
    // 1. Raise RLIMIT_MEMLOCK so the buffers below fit.
    hardening.record(goodnight::raise_memlock_limit())?;
    // 2. No core dumps, no same-UID ptrace, no /proc/PID/mem.
    hardening.record(goodnight::forbid_core_dumps_and_tracing())?;
    hardening.record(goodnight::limit_core_size_to_zero())?;
    // 3. Choose the memory (secretmem or locked), allocate the secret buffers
    //    in it, and read the secrets straight into them.
    let vault = Vault::load(&args.secrets, policy, args.memory)?;
    // 4. Spawn the supervised child (its buffers are not inherited: MADV_DONTFORK).
    let socket = args.socket.path();
    let supervised = match args.exec.as_slice() {
        [] => None,
        argv => Some(Supervised::spawn(argv, &socket)?),
    };
    // 5. Bind the socket (0600) and write the pidfile (0600).
    let pidfile = args
        .pidfile
        .clone()
        .unwrap_or_else(|| endpoint::default_pidfile(&socket));
    let endpoint = Endpoint::bind(&socket, &pidfile)?;
    // 6. Seal the process with the seccomp allowlist (feature `seccomp`).
    let confinement = confinement::seal().map_err(|e| {
        endpoint.remove();
        Failure::new(Exit::Hardening, e)
    })?;
    // 7. Enter the event loop.
    let timeouts = Timeouts {
        ping: args.ping_timeout.map(Duration::from_secs),
        grace: Duration::from_secs(args.grace),
        arm: args.arm_timeout.map(Duration::from_secs),
    };
    let event_loop = EventLoop::new(
        log,
        signal_fd,
        endpoint,
        vault,
        supervised,
        timeouts,
        hardening,
        confinement,
    );
    event_loop.announce_ready();
    let _ = std::io::stdout().flush();
    Ok(event_loop.run())
}

/// A Rust panic in the daemon prints its message and ends in SIGABRT (the
/// documented exit, distinct from the seccomp filter's SIGSYS), in every
/// build profile: unwinding would run destructors in an unknown state.
/// std's own hook is not used: with `RUST_BACKTRACE` set it resolves a
/// backtrace (`getcwd`, opening the executable), which the seal kills.
fn end_rust_panics_in_sigabrt() {
    std::panic::set_hook(Box::new(|info| {
        let _ = writeln!(std::io::stderr(), "dazai: internal error: {info}");
        std::process::abort();
    }));
}
