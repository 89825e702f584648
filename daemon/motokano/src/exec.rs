//! Running an exec tool's program: never through a shell, in a process group
//! of its own that the daemon registers before the program starts, with a
//! death signal tied to `dazai mcp`, a time limit and an output cap.
//!
//! The fork and exec are written out (not `std::process::Command`) for two
//! reasons. The program must be registered with the daemon *after* the fork
//! and *before* the exec, and `Command::spawn` returns only once the exec has
//! happened. And the environment holds injected secrets: here it is built in a
//! [`Wiped`] block that the parent wipes right after the fork, where
//! `Command` would keep copies in memory this process cannot wipe.

use std::ffi::{c_char, CString};
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{getpid, gettid, pipe2, setpgid, Pid};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::ledger::Ledger;
use crate::wiped::Wiped;

/// Exit status of a child that could not start its program.
const CHILD_FAILED: i32 = 127;

/// Why a program could not be started.
#[derive(Debug)]
pub enum SpawnError {
    /// A system call in the parent failed.
    System(&'static str, Errno),
    /// The daemon would not register the program's process group.
    Register(String),
    /// `execve(2)` failed in the child.
    Exec(Errno),
    /// An environment entry cannot be passed (a NUL byte).
    Environment(String),
    /// Forking from another thread would tie the program's death signal to it.
    NotMainThread,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::System(what, errno) => write!(f, "{what} failed ({errno})"),
            Self::Register(why) => write!(
                f,
                "the daemon would not register the program's process group, so it was not started ({why})"
            ),
            Self::Exec(errno) => write!(f, "the program could not be executed ({errno})"),
            Self::Environment(why) => write!(f, "{why}"),
            Self::NotMainThread => write!(f, "internal error: programs must be started from the main thread"),
        }
    }
}

/// A child's environment as one block of `NAME=value\0` entries, wiped on drop.
pub struct Environment {
    block: Wiped,
    offsets: Vec<usize>,
}

impl Environment {
    /// Builds the block; a value holding a NUL byte is refused (it would be cut short).
    pub fn new(entries: &[(&str, &[u8])]) -> Result<Self, SpawnError> {
        let size = entries.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let mut block = Wiped::zeroed(size);
        let mut offsets = Vec::with_capacity(entries.len());
        let mut at = 0;
        for (name, value) in entries {
            if value.contains(&0) {
                return Err(SpawnError::Environment(format!(
                    "the value for {name} holds a NUL byte and cannot be an environment variable; fix: inject it on stdin instead"
                )));
            }
            offsets.push(at);
            let bytes = block.as_mut_slice();
            bytes[at..at + name.len()].copy_from_slice(name.as_bytes());
            at += name.len();
            bytes[at] = b'=';
            at += 1;
            bytes[at..at + value.len()].copy_from_slice(value);
            at += value.len() + 1;
        }
        Ok(Self { block, offsets })
    }
}

/// What the program is given.
pub struct Launch {
    /// The program's path and arguments (argv\[0\] is the path).
    pub argv: Vec<CString>,
    /// Its whole environment.
    pub environment: Environment,
    /// Whether a secret will be written to its stdin ([`Running::feed_stdin`]);
    /// otherwise its stdin is empty.
    pub wants_stdin: bool,
}

/// A started program; dropping it kills its process group and reaps it.
pub struct Running {
    pid: Pid,
    stdin: Option<OwnedFd>,
    stdout: Option<AsyncFd<OwnedFd>>,
    stderr: Option<AsyncFd<OwnedFd>>,
    pidfd: AsyncFd<OwnedFd>,
    reaped: bool,
    ledger: Arc<Ledger>,
}

/// Starts `launch`: forks, lets `register` register the child's process group
/// with the daemon, and only then lets the child exec the program.
///
/// Must run on the main thread: `PR_SET_PDEATHSIG` fires when the *thread*
/// that forked ends, and the main thread lives as long as `dazai mcp`.
pub fn spawn(
    launch: Launch,
    ledger: Arc<Ledger>,
    register: impl FnOnce(i32) -> Result<(), String>,
) -> Result<Running, SpawnError> {
    if gettid() != getpid() {
        return Err(SpawnError::NotMainThread);
    }
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError::System("pipe2", e));
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let (report_r, report_w) = pipe()?;

    // Everything the child touches is made before the fork: it may not allocate.
    let Launch {
        argv,
        environment,
        wants_stdin,
    } = launch;
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let block = environment.block.as_slice().as_ptr();
    let mut envp: Vec<*const c_char> = environment
        .offsets
        .iter()
        // SAFETY: each offset is the start of an entry inside the block.
        .map(|&at| unsafe { block.add(at) }.cast::<c_char>())
        .collect();
    envp.push(std::ptr::null());
    let child = ChildPlan {
        parent: getpid().as_raw(),
        program: argv[0].as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp.as_ptr(),
        stdin: stdin_r.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        go: go_r.as_raw_fd(),
        report: report_w.as_raw_fd(),
    };

    // SAFETY: fork(2) takes no arguments; the child branch below calls only
    // async-signal-safe functions on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::System("fork", Errno::last()));
    }
    if pid == 0 {
        // SAFETY: this is the child of the fork above; `child` points into
        // buffers that the fork copied and that stay untouched until exec.
        unsafe { child.run() }
    }
    // The child has its own copy of the environment now; wipe ours at once.
    drop(environment);
    drop((stdin_r, stdout_w, stderr_w, go_r, report_w));
    let pid = Pid::from_raw(pid);
    // Set the group from both sides, so it exists whichever runs first.
    let _ = setpgid(pid, pid);
    let abandon = |error: SpawnError| {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        error
    };
    if let Err(why) = register(pid.as_raw()) {
        return Err(abandon(SpawnError::Register(why)));
    }
    ledger.track_group(pid.as_raw());
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(errno) => {
            ledger.untrack_group(pid.as_raw());
            return Err(abandon(SpawnError::System("pidfd_open", errno)));
        }
    };
    // The go-ahead: from here the child may exec.
    let _ = nix::unistd::write(&go_w, b"g");
    drop(go_w);
    let mut report = [0u8; 4];
    let got = read_full(report_r.as_fd(), &mut report);
    let mut running = Running {
        pid,
        stdin: None,
        stdout: None,
        stderr: None,
        pidfd: async_fd(pidfd).map_err(|e| SpawnError::System("epoll registration", e))?,
        reaped: false,
        ledger,
    };
    if got == 4 {
        let errno = Errno::from_raw(i32::from_ne_bytes(report));
        return Err(SpawnError::Exec(errno));
    }
    running.stdout =
        Some(async_fd(stdout_r).map_err(|e| SpawnError::System("epoll registration", e))?);
    running.stderr =
        Some(async_fd(stderr_r).map_err(|e| SpawnError::System("epoll registration", e))?);
    if wants_stdin {
        running.stdin = Some(stdin_w);
    }
    Ok(running)
}

/// What the child does between fork and exec, as raw values.
struct ChildPlan {
    parent: libc::pid_t,
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    go: RawFd,
    report: RawFd,
}

impl ChildPlan {
    /// Runs in the forked child: only async-signal-safe calls, no allocation.
    ///
    /// # Safety
    ///
    /// Call only in the child of a fork, with every pointer valid in it.
    unsafe fn run(&self) -> ! {
        // SAFETY: the caller guarantees we are the freshly forked child; every
        // call is async-signal-safe and every pointer was valid before the fork.
        unsafe {
            libc::setpgid(0, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
                || libc::getppid() != self.parent
            {
                libc::_exit(CHILD_FAILED);
            }
            // Rust ignores SIGPIPE and the runtime may block signals; a program
            // must start with the defaults.
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGPIPE, &default, std::ptr::null_mut());
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::dup2(self.stdin, 0) < 0
                || libc::dup2(self.stdout, 1) < 0
                || libc::dup2(self.stderr, 2) < 0
            {
                self.fail();
            }
            // Wait until the daemon has registered this process group.
            let mut byte = 0u8;
            loop {
                let n = libc::read(self.go, (&raw mut byte).cast(), 1);
                if n == 1 {
                    break;
                }
                if n < 0 && *libc::__errno_location() == libc::EINTR {
                    continue;
                }
                libc::_exit(CHILD_FAILED);
            }
            libc::execve(self.program, self.argv, self.envp);
            self.fail()
        }
    }

    /// Reports errno to the parent and ends the child.
    ///
    /// # Safety
    ///
    /// As for [`run`](Self::run).
    unsafe fn fail(&self) -> ! {
        // SAFETY: as in `run`: async-signal-safe calls on a local buffer.
        unsafe {
            let errno = (*libc::__errno_location()).to_ne_bytes();
            libc::write(self.report, errno.as_ptr().cast(), errno.len());
            libc::_exit(CHILD_FAILED)
        }
    }
}

/// Reads until `buf` is full or end of file; returns the bytes read.
fn read_full(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    got
}

fn async_fd(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, Errno> {
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns it until it
    // drops; nothing else can close or replace that descriptor meanwhile.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| {
        let error: std::io::Error = e.into();
        Errno::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
    })
}

/// `pidfd_open(2)`: a descriptor that becomes readable when the process exits.
fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: the syscall takes a pid and flags by value and returns a new
    // descriptor or -1; no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The program exited with this status.
    Exited(i32),
    /// The program was killed by this signal (not by us).
    Signaled(i32),
    /// The time limit ran out; the group was killed.
    TimedOut,
    /// The output cap was reached; the group was killed.
    CapReached,
    /// The client cancelled the call; the group was killed.
    Cancelled,
}

/// Everything a run produced (unredacted: the caller redacts, then wipes).
pub struct Output {
    /// Bytes from stdout.
    pub stdout: Wiped,
    /// Bytes from stderr.
    pub stderr: Wiped,
    /// How it ended.
    pub end: End,
    /// The program's pid (for logs).
    pub pid: i32,
}

/// What woke the collection loop.
enum Event {
    Out(Option<usize>),
    Err(Option<usize>),
    LeaderExited,
}

impl Running {
    /// The program's pid.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Writes `bytes` to the program's stdin and closes it. The pipe is sized
    /// to hold them, so this never waits on the program.
    pub fn feed_stdin(&mut self, bytes: &[u8]) -> Result<(), Errno> {
        let Some(stdin) = self.stdin.take() else {
            return Ok(());
        };
        let wanted = bytes.len().max(4096);
        if bytes.len() > 4096 {
            fcntl(&stdin, FcntlArg::F_SETPIPE_SZ(wanted as i32))?;
        }
        fcntl(&stdin, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let mut rest = bytes;
        while !rest.is_empty() {
            match nix::unistd::write(&stdin, rest) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(errno),
            }
        }
        Ok(())
    }

    /// Collects output until the program exits and its pipes are drained, or
    /// the time limit, the cap (`limit` bytes of stdout and stderr together),
    /// `cancelled` or the ledger's end stops it. Every buffer that held output
    /// is a [`Wiped`], so a call dropped half-way wipes what it read too. When the program exits, whatever it left
    /// running in its process group is killed at once (it could otherwise
    /// hold the pipes open until the time limit); the program is reaped last.
    pub async fn finish(
        mut self,
        limit: usize,
        timeout: Duration,
        cancelled: impl Future<Output = ()>,
    ) -> Output {
        // No stdin secret: the program reads end of file.
        self.stdin = None;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stdout = Wiped::zeroed(limit);
        let mut stderr = Wiped::zeroed(limit);
        let (mut out_len, mut err_len) = (0, 0);
        let ended = self.ledger.ended();
        let cancelled = async move {
            tokio::select! {
                () = cancelled => {}
                () = ended => {}
            }
        };
        tokio::pin!(cancelled);
        let (mut out_chunk, mut err_chunk) = (Wiped::zeroed(8192), Wiped::zeroed(8192));
        let mut leader_exited = false;
        let stopped = loop {
            if self.stdout.is_none() && self.stderr.is_none() {
                break None;
            }
            let room = limit - out_len - err_len;
            if room == 0 {
                break Some(End::CapReached);
            }
            let want = room.min(out_chunk.as_slice().len());
            let event = tokio::select! {
                r = read_some(self.stdout.as_ref(), &mut out_chunk.as_mut_slice()[..want]) => Event::Out(r),
                r = read_some(self.stderr.as_ref(), &mut err_chunk.as_mut_slice()[..want]) => Event::Err(r),
                _ = self.pidfd.readable(), if !leader_exited => Event::LeaderExited,
                () = tokio::time::sleep_until(deadline) => break Some(End::TimedOut),
                () = &mut cancelled => break Some(End::Cancelled),
            };
            match event {
                Event::LeaderExited => {
                    // Not reaped yet, so the group id still names its group.
                    leader_exited = true;
                    let _ = kill(Pid::from_raw(-self.pid.as_raw()), Signal::SIGKILL);
                }
                Event::Out(Some(n)) => {
                    stdout.as_mut_slice()[out_len..out_len + n]
                        .copy_from_slice(&out_chunk.as_slice()[..n]);
                    out_len += n;
                }
                Event::Err(Some(n)) => {
                    stderr.as_mut_slice()[err_len..err_len + n]
                        .copy_from_slice(&err_chunk.as_slice()[..n]);
                    err_len += n;
                }
                Event::Out(None) => self.stdout = None,
                Event::Err(None) => self.stderr = None,
            }
        };
        drop((out_chunk, err_chunk));
        let end = match stopped {
            Some(end) => end,
            None if leader_exited => End::Exited(0),
            // Both pipes closed: wait for the program itself to exit.
            None => tokio::select! {
                _ = self.pidfd.readable() => End::Exited(0),
                () = tokio::time::sleep_until(deadline) => End::TimedOut,
                () = &mut cancelled => End::Cancelled,
            },
        };
        let status = self.kill_group_and_reap();
        let end = match (end, status) {
            (End::Exited(_), Some(WaitStatus::Exited(_, code))) => End::Exited(code),
            (End::Exited(_), Some(WaitStatus::Signaled(_, signal, _))) => {
                End::Signaled(signal as i32)
            }
            (end, _) => end,
        };
        stdout.truncate(out_len);
        stderr.truncate(err_len);
        Output {
            stdout,
            stderr,
            end,
            pid: self.pid.as_raw(),
        }
    }

    /// SIGKILLs the process group (the leader is not reaped yet, so the group
    /// id still names this group) and the leader, then reaps the leader.
    fn kill_group_and_reap(&mut self) -> Option<WaitStatus> {
        if self.reaped {
            return None;
        }
        let _ = kill(Pid::from_raw(-self.pid.as_raw()), Signal::SIGKILL);
        let _ = kill(self.pid, Signal::SIGKILL);
        let status = loop {
            match waitpid(self.pid, None) {
                Err(Errno::EINTR) => continue,
                other => break other.ok(),
            }
        };
        self.reaped = true;
        self.ledger.untrack_group(self.pid.as_raw());
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_group_and_reap();
    }
}

/// One read from a pipe; `None` at end of file (or error), pending forever
/// for a pipe already closed.
async fn read_some(fd: Option<&AsyncFd<OwnedFd>>, buf: &mut [u8]) -> Option<usize> {
    let Some(fd) = fd else {
        return std::future::pending().await;
    };
    loop {
        let mut guard = fd.readable().await.ok()?;
        match guard.try_io(|inner| {
            nix::unistd::read(inner.get_ref().as_fd(), buf).map_err(std::io::Error::from)
        }) {
            Ok(Ok(0)) => return None,
            Ok(Ok(n)) => return Some(n),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(Err(_)) => return None,
            Err(_would_block) => continue,
        }
    }
}
