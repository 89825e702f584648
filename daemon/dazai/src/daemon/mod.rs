//! `dazai daemon`: start-up, in order, then the event loop.

mod capability;
pub mod endpoint;
mod event_loop;
mod framing;
mod last_resort;
mod panic;
pub mod registry;
pub mod secrets;
mod status;
pub mod supervisor;

use std::fs::File;
use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
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
    ]
    .into_iter()
    .chain(UNEXPECTED_ENDINGS)
    {
        set.add(signal);
    }
    set
}

/// The other signals whose default action ends a process (the faults have
/// the last resort). The daemon uses none of them, so one that arrives is
/// somebody ending it: it runs the panic rather than die without a wipe.
/// Real-time signals are not caught (see docs/usage.md, "Signals").
pub(crate) const UNEXPECTED_ENDINGS: [Signal; 9] = [
    Signal::SIGQUIT,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGSTKFLT,
];

/// Runs the daemon; returns only on failure at start-up or on a clean exit
/// (its exit code). The panic never returns.
pub fn run(args: DaemonArgs) -> Result<u8, Failure> {
    let policy = if args.insecure_allow_unlocked {
        LockPolicy::InsecureAllowUnlocked
    } else {
        LockPolicy::Required
    };
    end_rust_panics_in_sigabrt();
    last_resort::install().map_err(|e| Failure::internal("cannot catch fatal signals", e))?;
    let signals = daemon_signals();
    signals
        .thread_block()
        .map_err(|e| Failure::internal("cannot block signals", e))?;
    if let Some(fd) = args.under_run {
        refuse_secret_on(&args.secrets, fd)?;
    }
    let readiness = Readiness::new(args.under_run)?;
    let run = args.under_run.map(|_| nix::unistd::getppid());
    if run.is_some() {
        // Until the secrets are read, `dazai run`'s death ends this process
        // outright: a prompt must not keep reading the terminal after it.
        die_with_run(Signal::SIGKILL)?;
    }

    let mut hardening = Hardening::new(policy);
    // 1. Raise RLIMIT_MEMLOCK so the buffers below fit.
    hardening.record(goodnight::raise_memlock_limit())?;
    // 2. No core dumps, no same-UID ptrace, no /proc/PID/mem.
    hardening.record(goodnight::forbid_core_dumps_and_tracing())?;
    hardening.record(goodnight::limit_core_size_to_zero())?;
    // 3. Choose the memory (secretmem or locked), allocate the secret buffers
    //    in it, and read the secrets straight into them. `fd:N` sources are
    //    read before the daemon opens a descriptor of its own, so N can only
    //    name one the caller handed down.
    let vault = Vault::load(&args.secrets, policy, args.memory)?;
    if let Some(parent) = run {
        // From now on its death is the session's loss (SIGUSR2: the panic),
        // even before its heartbeat attaches.
        die_with_run(Signal::SIGUSR2)?;
        if nix::unistd::getppid() != parent {
            return Err(Failure::new(
                Exit::Internal,
                "`dazai run` ended while the secrets were read; they are wiped",
            ));
        }
    }
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Failure::internal("cannot create a signalfd", e))?;
    let log =
        Log::to_stderr(args.quiet).map_err(|e| Failure::internal("cannot open the log", e))?;
    if let Some(fd) = log.nonblocking_fd() {
        last_resort::arm_log(fd);
    }
    // 4. Bind the socket (0600) and write the pidfile (0600) before anything
    //    runs that may talk to them.
    let socket = args.socket.path();
    let pidfile = args
        .pidfile
        .clone()
        .unwrap_or_else(|| endpoint::default_pidfile(&socket));
    let endpoint = Endpoint::bind(&socket, &pidfile)?;
    // 5. Spawn the supervised child holding the capability, the one way to a
    //    secret (its buffers are not inherited: MADV_DONTFORK).
    let (door, supervised) = match args.exec.as_slice() {
        [] => (None, None),
        argv => {
            let (door, tree_end) = capability::open_pair().map_err(|e| {
                endpoint.remove();
                Failure::internal("cannot make the capability", e)
            })?;
            let supervised = Supervised::spawn(argv, &socket, &tree_end).inspect_err(|_| {
                endpoint.remove();
            })?;
            last_resort::arm_tree(supervised.pgid().as_raw(), supervised.cgroup_kill_fd());
            (Some(door), Some(supervised))
        }
    };
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
        door,
        timeouts,
        hardening,
        confinement,
        args.under_run.is_some(),
    );
    readiness.announce(&event_loop.announce_ready());
    Ok(event_loop.run())
}

/// The ready line's descriptor is not a secret's source.
fn refuse_secret_on(specs: &[secrets::SecretSpec], fd: RawFd) -> Result<(), Failure> {
    match specs.iter().find(|spec| spec.source == secrets::SecretSource::Fd(fd)) {
        Some(spec) => Err(Failure::new(
            Exit::Usage,
            format!(
                "secret {} names fd {fd}, which --under-run takes for the ready line; fix: pass the secret on another descriptor",
                spec.name
            ),
        )),
        None => Ok(()),
    }
}

/// Asks the kernel for `signal` when `dazai run`, the parent, dies.
fn die_with_run(signal: Signal) -> Result<(), Failure> {
    nix::sys::prctl::set_pdeathsig(signal)
        .map_err(|e| Failure::internal("cannot watch `dazai run`", e))
}

/// Where the ready line goes: stdout, or under `dazai run` a descriptor of its
/// own, so that the program keeps the caller's stdout untouched.
enum Readiness {
    Stdout,
    Descriptor(File),
}

impl Readiness {
    fn new(under_run: Option<RawFd>) -> Result<Self, Failure> {
        let Some(fd) = under_run else {
            return Ok(Self::Stdout);
        };
        // SAFETY: the descriptor is only borrowed for this one fcntl call, which
        // fails cleanly with EBADF if the number is not an open descriptor.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::fcntl::fcntl(
            borrowed,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("--under-run {fd}: not an open descriptor ({e}); fix: leave this option to `dazai run`"),
            )
        })?;
        // SAFETY: the descriptor is open (checked above) and was handed to this
        // process for the ready line alone; owning it closes it once written.
        Ok(Self::Descriptor(unsafe { File::from_raw_fd(fd) }))
    }

    /// Writes the ready line; a failed write (a closed or full stdout) must
    /// not end the daemon, which then runs on without telling anyone.
    fn announce(self, line: &str) {
        let _ = match self {
            Self::Stdout => {
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{line}").and_then(|()| stdout.flush())
            }
            Self::Descriptor(mut file) => writeln!(file, "{line}"),
        };
    }
}

/// A Rust panic in the daemon wipes every secret first, prints its message
/// and aborts, in every build profile: unwinding would run destructors in an
/// unknown state. The abort's SIGABRT runs the last resort (the supervised
/// tree killed, SIGKILL), distinct from the seccomp filter's SIGSYS.
/// std's own hook is not used: with `RUST_BACKTRACE` set it resolves a
/// backtrace (`getcwd`, opening the executable), which the seal kills.
fn end_rust_panics_in_sigabrt() {
    std::panic::set_hook(Box::new(|info| {
        goodnight::emergency::wipe_every_secret_buffer();
        let _ = writeln!(std::io::stderr(), "dazai: internal error: {info}");
        std::process::abort();
    }));
}
