//! Shared test helpers: run a closure in a forked child (optionally as
//! `nobody`), read what the kernel reports about a process in `/proc`, and
//! decide whether a test's prerequisites (root, secret memory) hold.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};

use goodnight::{LockPolicy, MemoryBackend, SecretBuffer};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{self, ForkResult, Gid, Pid, Uid};

/// uid and gid of `nobody`: a real non-root user, so `RLIMIT_MEMLOCK`,
/// dumpability and `/proc` permissions bind (root holds `CAP_IPC_LOCK` and
/// `CAP_SYS_PTRACE`, which would make those tests pass for the wrong reason).
pub const NOBODY: u32 = 65534;

/// Who the child runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// The test's own user (root in CI containers).
    Caller,
    /// uid/gid 65534 with no supplementary groups and no capabilities.
    Nobody,
}

/// A forked child that ran a closure, reported a line of text, and now waits
/// for the parent to let it exit, so the parent can inspect `/proc/PID`
/// while the child still stands in the state the closure left it in.
pub struct Child {
    pid: Pid,
    report: File,
    release: Option<File>,
    finished: bool,
}

impl Child {
    /// Forks; the child switches user if asked, runs `body`, sends its result
    /// as the report, then waits for [`Child::finish`] and exits 0. A panic
    /// in `body` is reported as `panicked: …` and exits 101.
    pub fn spawn(run_as: RunAs, body: impl FnOnce() -> String) -> Child {
        let (report_read, report_write) = pipe();
        let (release_read, release_write) = pipe();
        // SAFETY: the child only runs the test's closure and then `_exit`s,
        // never returning into the test harness; the harness's other thread is
        // parked waiting for this test, holding no lock the child could need
        // (glibc resets its malloc locks across fork).
        match unsafe { unistd::fork() }.expect("fork") {
            ForkResult::Child => {
                drop(report_read);
                drop(release_write);
                let code = run_child(run_as, body, File::from(report_write));
                // Blocks until the parent writes the release byte (or dies).
                let _ = File::from(release_read).read(&mut [0u8; 1]);
                // SAFETY: `_exit` has no preconditions; unlike `exit` it skips
                // the atexit handlers and stdio buffers copied from the parent.
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => Child {
                pid: child,
                report: File::from(report_read),
                release: Some(File::from(release_write)),
                finished: false,
            },
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits until the child's closure returned and gives its report; empty
    /// if the child died before reporting.
    pub fn report(&mut self) -> String {
        let mut report = String::new();
        self.report
            .read_to_string(&mut report)
            .expect("read the child's report");
        report
    }

    /// Lets the child exit and returns how it ended.
    pub fn finish(mut self) -> WaitStatus {
        // A byte rather than closing the pipe: other children forked meanwhile
        // hold copies of the write end, so end of file could be far away.
        if let Some(mut release) = self.release.take() {
            // EPIPE only means the child is already dead, which waitpid reports.
            let _ = release.write_all(b"x");
        }
        self.finished = true;
        waitpid(self.pid, None).expect("waitpid")
    }
}

impl Drop for Child {
    /// A failed assertion in the parent must not leave the child waiting forever.
    fn drop(&mut self) {
        if !self.finished {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Runs `body` in a child to completion: its report and how it ended.
pub fn run_in_child(run_as: RunAs, body: impl FnOnce() -> String) -> (String, WaitStatus) {
    let mut child = Child::spawn(run_as, body);
    let report = child.report();
    (report, child.finish())
}

fn run_child(run_as: RunAs, body: impl FnOnce() -> String, mut report: File) -> i32 {
    // Tests crash children on purpose; they must not leave core files behind.
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_CORE) {
        let _ = setrlimit(Resource::RLIMIT_CORE, 0, hard);
    }
    if run_as == RunAs::Nobody {
        if let Err(errno) = become_nobody() {
            let _ = write!(report, "cannot become nobody: {errno}");
            return 102;
        }
    }
    // A parent killed mid-test (timeout, ^C) must not leave children behind.
    // Set after the user switch, which clears it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let (text, code) = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(text) => (text, 0),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (format!("panicked: {message}"), 101)
        }
    };
    let _ = report.write_all(text.as_bytes());
    code
}

fn become_nobody() -> nix::Result<()> {
    unistd::setgroups(&[])?;
    unistd::setresgid(
        Gid::from_raw(NOBODY),
        Gid::from_raw(NOBODY),
        Gid::from_raw(NOBODY),
    )?;
    unistd::setresuid(
        Uid::from_raw(NOBODY),
        Uid::from_raw(NOBODY),
        Uid::from_raw(NOBODY),
    )?;
    // Changing the euid resets "dumpable" to fs.suid_dumpable (usually 0),
    // which would make every nobody child look hardened; an ordinary process
    // of that user is dumpable.
    nix::sys::prctl::set_dumpable(true)
}

/// A pipe as (read end, write end), closed on exec so that programs a test
/// runs (e.g. `cargo`) cannot hold a child's pipe open.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

/// The read end of a pipe that holds exactly `bytes` and then end of file.
pub fn pipe_holding(bytes: &[u8]) -> OwnedFd {
    let (read, write) = pipe();
    File::from(write)
        .write_all(bytes)
        .expect("fill the pipe (stays below the pipe buffer size)");
    read
}

/// `"self"` or a pid, for `/proc/{}`.
pub fn proc_dir(pid: Option<Pid>) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_string(),
    }
}

/// The system page size.
pub fn page_size() -> usize {
    let size = unistd::sysconf(unistd::SysconfVar::PAGE_SIZE)
        .expect("sysconf")
        .expect("page size");
    usize::try_from(size).expect("positive page size")
}

/// One entry of `/proc/PID/smaps`.
#[derive(Debug, Clone, Default)]
pub struct SmapsEntry {
    pub start: usize,
    pub end: usize,
    pub perms: String,
    /// The pathname column, e.g. `/secretmem (deleted)`; empty when anonymous.
    pub path: String,
    pub size_kb: u64,
    pub locked_kb: u64,
    pub vm_flags: Vec<String>,
}

/// All entries of `/proc/PID/smaps` (`None` = this process).
pub fn smaps(pid: Option<Pid>) -> Vec<SmapsEntry> {
    let text = std::fs::read_to_string(format!("{}/smaps", proc_dir(pid))).expect("read smaps");
    let mut entries: Vec<SmapsEntry> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = address_range(first) {
            let perms = words.next().unwrap_or_default().to_string();
            // offset, device and inode come before the pathname.
            let path = words.skip(3).collect::<Vec<_>>().join(" ");
            entries.push(SmapsEntry {
                start,
                end,
                perms,
                path,
                ..SmapsEntry::default()
            });
            continue;
        }
        let Some(entry) = entries.last_mut() else {
            continue;
        };
        match first {
            "Size:" => entry.size_kb = kb(words.next()),
            "Locked:" => entry.locked_kb = kb(words.next()),
            "VmFlags:" => entry.vm_flags = words.map(str::to_string).collect(),
            _ => {}
        }
    }
    entries
}

/// The smaps entry that starts exactly at `addr`.
pub fn smaps_entry_at(pid: Option<Pid>, addr: usize) -> SmapsEntry {
    smaps(pid)
        .into_iter()
        .find(|entry| entry.start == addr)
        .unwrap_or_else(|| panic!("no smaps entry starts at {addr:#x}"))
}

/// The mappings in `maps_text` (a `/proc/PID/maps`) that overlap `[start, end)`.
pub fn maps_overlapping(maps_text: &str, start: usize, end: usize) -> Vec<String> {
    maps_text
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .next()
                .and_then(address_range)
                .is_some_and(|(from, to)| from < end && start < to)
        })
        .map(str::to_string)
        .collect()
}

fn address_range(word: &str) -> Option<(usize, usize)> {
    let (start, end) = word.split_once('-')?;
    Some((
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
    ))
}

fn kb(word: Option<&str>) -> u64 {
    word.and_then(|w| w.parse().ok()).expect("a kB value")
}

/// A `kB` field of `/proc/self/status`, e.g. `VmLck`.
pub fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").expect("read status");
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|rest| kb(rest.split_whitespace().next()))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The (soft, hard) columns of one row of `/proc/PID/limits`, e.g.
/// `"Max locked memory"`, as printed (`"unlimited"` or a number).
pub fn proc_limits(pid: Option<Pid>, row: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("{}/limits", proc_dir(pid))).expect("read limits");
    let line = text
        .lines()
        .find(|line| line.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} row in limits"));
    let mut columns = line[row.len()..].split_whitespace();
    let soft = columns.next().expect("soft column").to_string();
    let hard = columns.next().expect("hard column").to_string();
    (soft, hard)
}

/// `len` bytes of this process's memory at `addr`, read through
/// `/proc/self/mem`, i.e. by the kernel rather than through a Rust reference.
pub fn read_own_memory(addr: usize, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mem = File::open("/proc/self/mem").expect("open /proc/self/mem");
    let mut bytes = vec![0xAA; len];
    mem.read_exact_at(&mut bytes, addr as u64)
        .expect("read /proc/self/mem");
    bytes
}

/// `len` bytes at `addr` read by this process's own loads, the one reader
/// that secret memory still answers (`/proc/self/mem` gives EIO for it).
///
/// The caller keeps the mapping alive and unchanged for the call.
pub fn read_through_the_mapping(addr: usize, len: usize) -> Vec<u8> {
    (addr..addr + len)
        .map(|at| {
            // SAFETY: the caller guarantees `[addr, addr + len)` is mapped
            // readable for the whole call (a live `SecretBuffer`'s data pages);
            // the volatile load is a plain hardware read of one byte there.
            unsafe { (at as *const u8).read_volatile() }
        })
        .collect()
}

/// Whether the tests run in CI (`CI=true`), where a missing prerequisite is
/// a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// `true` when the prerequisite holds. When it does not: in CI the test
/// fails; elsewhere the reason is printed (past the test harness's output
/// capture) and `false` tells the test to skip.
pub fn prerequisite(test: &str, check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: prerequisite missing in CI (CI=true): {why}"),
        Err(why) => {
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
            false
        }
    }
}

/// The tests run as root (where they run in CI).
pub fn root() -> Result<(), String> {
    if Uid::effective().is_root() {
        Ok(())
    } else {
        Err(format!(
            "needs root (runs as uid {}): only root can try to read another \
             process's secret memory",
            Uid::effective()
        ))
    }
}

/// The kernel gives this process secret memory (`memfd_secret(2)`).
pub fn secret_memory() -> Result<(), String> {
    SecretBuffer::with_backend(1, LockPolicy::Required, MemoryBackend::SecretMem)
        .map(drop)
        .map_err(|error| error.to_string())
}

/// Every backend to run a backend-independent test on: the locked one, and
/// secretmem where the kernel offers it (see [`prerequisite`]).
pub fn memory_backends(test: &str) -> Vec<MemoryBackend> {
    let mut backends = vec![MemoryBackend::Locked];
    if prerequisite(test, secret_memory()) {
        backends.push(MemoryBackend::SecretMem);
    }
    backends
}
