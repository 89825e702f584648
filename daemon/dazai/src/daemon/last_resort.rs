//! What the daemon still does when a bug kills it: a Rust panic (which ends
//! in `abort(3)`, so SIGABRT) or a fatal signal it can catch (SIGSEGV,
//! SIGBUS, SIGILL, SIGFPE, SIGABRT). The handler runs the panic's first two
//! steps with async-signal-safe calls only: wipe every secret buffer
//! ([`goodnight::emergency`]), kill the supervised tree (its `cgroup.kill`,
//! then its process group); then one fixed log line, and SIGKILL, as the
//! panic ends. Registered processes are held in the event loop's registry,
//! out of a handler's reach: they are not killed on this path.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The supervised tree's process group (0: none yet).
static TREE_GROUP: AtomicI32 = AtomicI32::new(0);
/// Its open `cgroup.kill` (-1: none).
static CGROUP_KILL: AtomicI32 = AtomicI32::new(-1);
/// The log's descriptor, where a write never waits (-1: none).
static LOG: AtomicI32 = AtomicI32::new(-1);

/// The signals that mean the daemon itself is broken.
const FATAL: [Signal; 5] = [
    Signal::SIGSEGV,
    Signal::SIGBUS,
    Signal::SIGILL,
    Signal::SIGFPE,
    Signal::SIGABRT,
];

const LINE: &[u8] =
    b"dazai: PANIC: fatal error in the daemon itself: wiped every secret, killed the supervised tree; SIGKILL self\n";

/// Installs the handler for every fatal signal, on the alternate signal
/// stack std sets up (a stack overflow arrives as SIGSEGV).
pub fn install() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_fatal_signal),
        SaFlags::SA_ONSTACK | SaFlags::SA_NODEFER | SaFlags::SA_RESETHAND,
        SigSet::all(),
    );
    for signal in FATAL {
        // SAFETY: the handler only makes async-signal-safe calls (atomics,
        // volatile writes, write(2), kill(2), getpid(2)).
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// Tells the handler how to reach the supervised tree.
pub fn arm_tree(group: i32, cgroup_kill: Option<RawFd>) {
    CGROUP_KILL.store(cgroup_kill.unwrap_or(-1), Ordering::SeqCst);
    TREE_GROUP.store(group, Ordering::SeqCst);
}

/// Tells the handler where its one line goes.
pub fn arm_log(fd: RawFd) {
    LOG.store(fd, Ordering::SeqCst);
}

extern "C" fn on_fatal_signal(_signal: libc::c_int) {
    goodnight::emergency::wipe_every_secret_buffer();
    let cgroup_kill = CGROUP_KILL.load(Ordering::SeqCst);
    let group = TREE_GROUP.load(Ordering::SeqCst);
    let log = LOG.load(Ordering::SeqCst);
    // SAFETY: write(2), send(2), kill(2) and getpid(2) are async-signal-safe; the
    // buffers are static and their lengths exact; a descriptor that is
    // already closed only makes the write fail.
    unsafe {
        if cgroup_kill >= 0 {
            libc::write(cgroup_kill, b"1".as_ptr().cast(), 1);
        }
        if group > 0 {
            libc::kill(-group, libc::SIGKILL);
        }
        if log >= 0 {
            let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
            if libc::send(log, LINE.as_ptr().cast(), LINE.len(), flags) < 0 {
                // Not a socket: the log's own non-blocking description.
                libc::write(log, LINE.as_ptr().cast(), LINE.len());
            }
        }
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
