//! The `--exec` child: started in a process group (and a cgroup where one can
//! be delegated) that the panic kills whole.
//!
//! The daemon forks a small *shim* that runs the program and relays its exit
//! status. Both carry `PR_SET_PDEATHSIG(SIGKILL)`: a daemon killed hard (OOM
//! killer, `kill -9`) takes the shim with it, and the shim the program. The
//! shim exists for the clean shutdown: a kernel death signal can only be
//! withdrawn by the process that carries it, so on SIGTERM the daemon asks the
//! shim to withdraw its own and the program outlives the daemon, as documented.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, getppid, pipe2, setpgid, ForkResult, Pid};

use super::capability::TreeEnd;
use crate::failure::{Exit, Failure};
use goodnight::pidfd::pidfd_open;

use crate::sys::exit_now;

/// The message that asks the shim to withdraw its death signal.
const RELEASE: u8 = b'R';
/// The message that lets the shim start the program (after it joined the cgroup).
const GO: u8 = b'G';
/// The shim's answer once its death signal is withdrawn.
const RELEASED: u8 = b'A';
/// How long a clean shutdown waits for the shim's answer.
const RELEASE_TIMEOUT_MS: u16 = 2000;

/// A supervised program and the means to kill everything it started.
pub struct Supervised {
    /// The shim: the daemon's direct child and the process group leader.
    pub shim: Pid,
    /// The program itself.
    pub program: Pid,
    /// The cgroup holding shim and program, when one could be made.
    pub cgroup: Option<Cgroup>,
    /// Why no cgroup is used, when none is.
    pub cgroup_unavailable: Option<String>,
    control: File,
    report: File,
}

/// A cgroup v2 directory of our own with its `cgroup.kill` opened at start-up
/// (the sealed daemon cannot open files later).
pub struct Cgroup {
    /// The directory, removed when the program has ended.
    pub dir: PathBuf,
    kill: File,
}

/// What the panic's kill step reached.
#[derive(Debug)]
pub struct GroupKill {
    /// The process group signalled.
    pub pgid: i32,
    /// Whether `cgroup.kill` was written (reaches members that left the group).
    pub cgroup_killed: bool,
}

impl std::fmt::Display for GroupKill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process group {}", self.pgid)?;
        if self.cgroup_killed {
            write!(f, " and its cgroup")?;
        }
        Ok(())
    }
}

impl Supervised {
    /// Starts `argv` under a shim in its own process group, holding the
    /// capability (`DAZAI_CAPABILITY_FD`) so `dazai get` works inside it without
    /// set-up, and with `DAZAI_SOCKET` set to `socket` for the other commands.
    pub fn spawn(argv: &[String], socket: &Path, capability: &TreeEnd) -> Result<Self, Failure> {
        let spawn_error = |what: &str, e: &dyn std::fmt::Display| {
            Failure::new(
                Exit::Spawn,
                format!(
                    "cannot start {:?}: {what} failed ({e}); fix: check that the program exists and is executable",
                    argv[0]
                ),
            )
        };
        let (cgroup, cgroup_unavailable) = match Cgroup::create() {
            Ok(cgroup) => (Some(cgroup), None),
            Err(reason) => (None, Some(reason)),
        };
        let (control_read, control_write) =
            pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_error("pipe", &e))?;
        let (report_read, report_write) =
            pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_error("pipe", &e))?;
        let daemon = getpid();
        // SAFETY: the daemon is single-threaded here (no thread is ever started
        // before the event loop), so the child may run ordinary Rust code.
        match unsafe { fork() }.map_err(|e| spawn_error("fork", &e))? {
            ForkResult::Child => {
                drop(control_write);
                drop(report_read);
                run_shim(
                    argv,
                    socket,
                    capability.raw(),
                    daemon,
                    control_read,
                    report_write,
                )
            }
            ForkResult::Parent { child: shim } => {
                drop(control_read);
                drop(report_write);
                let mut control = File::from(control_write);
                let cgroup = cgroup.and_then(|c| c.adopt(shim).ok());
                control
                    .write_all(&[GO])
                    .map_err(|e| spawn_error("shim", &e))?;
                let mut report = File::from(report_read);
                let program = read_spawn_report(&mut report).map_err(|e| {
                    let _ = waitpid(shim, None);
                    spawn_error("exec", &e)
                })?;
                Ok(Self {
                    shim,
                    program,
                    cgroup_unavailable: cgroup_unavailable.or_else(|| {
                        cgroup
                            .is_none()
                            .then(|| "cannot move the child into the cgroup".into())
                    }),
                    cgroup,
                    control,
                    report,
                })
            }
        }
    }

    /// The process group every member of the supervised tree starts in.
    pub fn pgid(&self) -> Pid {
        self.shim
    }

    /// The open `cgroup.kill`, for the last resort ([`super::last_resort`]).
    pub fn cgroup_kill_fd(&self) -> Option<RawFd> {
        self.cgroup.as_ref().map(|cgroup| cgroup.kill.as_raw_fd())
    }

    /// How the panic reaches the tree, for status and logs.
    pub fn kill_mechanism(&self) -> &'static str {
        if self.cgroup.is_some() {
            "cgroup.kill + process group"
        } else {
            "process group"
        }
    }

    /// SIGKILLs the whole tree: the cgroup (which also reaches members that
    /// called `setsid`) and the process group.
    pub fn kill_all(&mut self) -> GroupKill {
        let cgroup_killed = self
            .cgroup
            .as_mut()
            .is_some_and(|cgroup| cgroup.kill.write_all(b"1").is_ok());
        let _ = kill(Pid::from_raw(-self.pgid().as_raw()), Signal::SIGKILL);
        GroupKill {
            pgid: self.pgid().as_raw(),
            cgroup_killed,
        }
    }

    /// Lets the program outlive the daemon (clean shutdown): returns once the
    /// shim confirms it withdrew its death signal, or it could not.
    pub fn release(&mut self) -> bool {
        if self.control.write_all(&[RELEASE]).is_err() {
            return false;
        }
        let mut answer = [PollFd::new(self.report.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut answer, RELEASE_TIMEOUT_MS), Ok(1)) {
            return false;
        }
        let mut byte = [0u8; 1];
        matches!(self.report.read(&mut byte), Ok(1) if byte[0] == RELEASED)
    }

    /// The shim's exit status, if it has ended. The shim is left a zombie,
    /// so its pid, which is also the tree's process group id, cannot be
    /// handed to a new process before [`Self::end`] signals that group.
    pub fn ended(&self) -> Option<WaitStatus> {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.shim), peek) {
            Ok(WaitStatus::StillAlive) | Err(_) => None,
            Ok(status) => Some(status),
        }
    }

    /// The program has ended: SIGKILLs whatever it left running (a
    /// background job, a process that called `setsid`), which could hold a
    /// secret it fetched and must not outlive the run; then reaps the shim and
    /// removes the cgroup (which stays, for the next daemon to remove, while
    /// the kernel is still ending its members).
    pub fn end(&mut self) -> GroupKill {
        let killed = self.kill_all();
        let _ = waitpid(self.shim, None);
        if let Some(cgroup) = &self.cgroup {
            let _ = fs::remove_dir(&cgroup.dir);
        }
        killed
    }
}

impl Cgroup {
    /// Makes `dazai-PID` under the daemon's own cgroup v2 directory.
    fn create() -> Result<Self, String> {
        let root = cgroup2_mount().ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
            })
            .ok_or("this process has no cgroup v2 path")?;
        let parent = root.join(own.trim_start_matches('/'));
        remove_stale_cgroups(&parent);
        let dir = parent.join(format!("dazai-{}", std::process::id()));
        fs::create_dir(&dir)
            .map_err(|e| format!("cannot create {} ({e}): no delegated cgroup", dir.display()))?;
        let kill = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
            .map_err(|e| {
                let _ = fs::remove_dir(&dir);
                format!(
                    "no cgroup.kill in {} ({e}): kernel older than 5.14",
                    dir.display()
                )
            })?;
        Ok(Self { dir, kill })
    }

    /// Moves the shim in before it starts the program, so every descendant is inside.
    fn adopt(self, shim: Pid) -> Result<Self, ()> {
        let moved = OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .and_then(|mut procs| procs.write_all(shim.to_string().as_bytes()));
        if moved.is_err() {
            let _ = fs::remove_dir(&self.dir);
            return Err(());
        }
        Ok(self)
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup` or, on hybrid
/// layouts like these machines', `/sys/fs/cgroup/unified`).
/// A daemon that panics SIGKILLs itself while its cgroup still holds the
/// dying tree, so it cannot remove the cgroup; the next daemon started in
/// the same cgroup does. It removes every `dazai-PID` beside it whose daemon
/// is gone (its own pid's is from an earlier process, by definition): left
/// there, they pile up, and one named like a new daemon's would make it fall
/// back to the weaker process-group kill. `rmdir` refuses a cgroup that
/// still holds a process (EBUSY), so nothing alive is touched.
fn remove_stale_cgroups(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("dazai-"))
            .and_then(|pid| pid.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        let own_pid = u32::try_from(pid).is_ok_and(|pid| pid == std::process::id());
        let daemon_gone = kill(Pid::from_raw(pid), None) == Err(nix::errno::Errno::ESRCH);
        if own_pid || daemon_gone {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next() == Some("cgroup2"))
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Reads the shim's one-line report: `S PID` once the program runs, `E MESSAGE` if it could not start.
fn read_spawn_report(report: &mut File) -> Result<Pid, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 512 {
        match report.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let text = String::from_utf8_lossy(&line);
    match text.split_once(' ') {
        Some(("S", pid)) => pid
            .trim()
            .parse()
            .map(Pid::from_raw)
            .map_err(|_| "garbled shim report".to_owned()),
        Some(("E", message)) => Err(message.trim().to_owned()),
        _ => Err("the shim ended before starting the program".to_owned()),
    }
}

/// The shim, in the forked child: never returns.
fn run_shim(
    argv: &[String],
    socket: &Path,
    capability: RawFd,
    daemon: Pid,
    control: OwnedFd,
    report: OwnedFd,
) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if getppid() != daemon {
        exit_now(1);
    }
    close_the_daemons_descriptors(&[capability, control.as_raw_fd(), report.as_raw_fd()]);
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    take_the_terminal_foreground(daemon);
    let mut control = File::from(control);
    let mut report = File::from(report);
    let mut byte = [0u8; 1];
    if control.read_exact(&mut byte).is_err() || byte[0] != GO {
        exit_now(1);
    }
    let spawned = Command::new(&argv[0])
        .args(&argv[1..])
        .env(dazai_client::paths::SOCKET_ENV, socket)
        .env(dazai_client::CAPABILITY_ENV, capability.to_string())
        .pre_exec_hardening(capability)
        .spawn();
    let program = match spawned {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            let _ = writeln!(report, "E {e}");
            exit_now(127);
        }
    };
    let _ = writeln!(report, "S {program}");
    relay_exit(program, control, report)
}

/// The shim is a copy of the daemon that never execs, so close-on-exec does
/// not apply to it: it closes what it inherited (the listening socket, the
/// daemon's end of the capability, the signalfd, the log), or, once the
/// daemon is gone, a connect would still queue on the socket and the
/// capability would never read as closed. Standard streams and `keep` stay.
fn close_the_daemons_descriptors(keep: &[RawFd]) {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let open: Vec<RawFd> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: this forked copy of the daemon owns nothing it will use
            // through these descriptors again; closing an already-closed one
            // (the directory's own, gone with `entries`) fails harmlessly.
            let _ = unsafe { libc::close(fd) };
        }
    }
}

/// An interactive program (`dazai run -- claude`) must own the terminal: when
/// the daemon's group was in the foreground, hand the foreground to the new
/// group, so the program reads the terminal and Ctrl-C reaches it, not the daemon.
fn take_the_terminal_foreground(daemon: Pid) {
    let stdin = std::io::stdin();
    let daemon_group = nix::unistd::getpgid(Some(daemon));
    if nix::unistd::tcgetpgrp(&stdin).ok() != daemon_group.ok() {
        return;
    }
    // A background group asking for the foreground gets SIGTTOU unless blocked.
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let _ = ttou.thread_block();
    let _ = nix::unistd::tcsetpgrp(&stdin, getpid());
}

/// What the program gets between fork and exec.
trait PreExecHardening {
    fn pre_exec_hardening(&mut self, capability: RawFd) -> &mut Self;
}

impl PreExecHardening for Command {
    fn pre_exec_hardening(&mut self, capability: RawFd) -> &mut Self {
        // SAFETY: the closure only makes async-signal-safe system calls
        // (prctl, sigprocmask, fcntl) in the child between fork and exec.
        unsafe {
            self.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The daemon blocks its signals to read them from a signalfd; the
                // program must start with the ordinary, empty mask.
                SigSet::all().thread_unblock()?;
                // The one descriptor of the daemon's that the program keeps.
                nix::fcntl::fcntl(
                    BorrowedFd::borrow_raw(capability),
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
                Ok(())
            })
        }
    }
}

/// Waits for the program, honouring a release request, then ends the shim
/// the way the program ended.
fn relay_exit(program: Pid, mut control: File, mut report: File) -> ! {
    let Ok(program_fd) = pidfd_open(program) else {
        exit_now(1)
    };
    let mut watching_control = true;
    loop {
        let mut fds = vec![PollFd::new(program_fd.as_fd(), PollFlags::POLLIN)];
        if watching_control {
            fds.push(PollFd::new(control.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        let program_ended = fds[0].any().unwrap_or(false);
        let control_ready = fds.get(1).is_some_and(|fd| fd.any().unwrap_or(false));
        drop(fds);
        if control_ready {
            let mut byte = [0u8; 1];
            match control.read(&mut byte) {
                Ok(1) if byte[0] == RELEASE => {
                    if nix::sys::prctl::set_pdeathsig(None).is_ok() {
                        let _ = report.write_all(&[RELEASED]);
                    }
                }
                _ => watching_control = false,
            }
        }
        if program_ended {
            match waitpid(program, None) {
                Ok(WaitStatus::Exited(_, code)) => exit_now(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => die_by(signal),
                _ => exit_now(1),
            }
        }
    }
}

/// Ends the shim by the program's own signal so the daemon sees the same status.
fn die_by(signal: Signal) -> ! {
    // SAFETY: restoring the default action of a signal is always sound.
    let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(signal);
    let _ = only.thread_unblock();
    let _ = kill(getpid(), signal);
    exit_now(128 + signal as i32)
}
