//! `lab-probe`: the small programs the lab runs inside its containers.
//!
//! ```text
//! lab-probe launch DIR NAME [--stdin FILE] -- PROGRAM ARGS...
//!     start PROGRAM in a new session (stdin a pipe fed with FILE, stdout DIR/NAME.out, stderr DIR/NAME.log),
//!     write DIR/NAME.pid, and when it ends DIR/NAME.exit: `signal=N unix_ms=T` or `exit=N unix_ms=T`
//! lab-probe dumpable-crash SECRET_FILE HEAP_FILE [--secret-on-heap]
//!     hold SECRET_FILE in a SecretBuffer and HEAP_FILE in a Vec, stay dumpable, abort
//! lab-probe hold [--skip-wipe] [--heap-copy] [--leave-half] [--unmap-unwiped]
//!     a daemon stand-in: non-dumpable, the secret from stdin in a SecretBuffer;
//!     SIGUSR2 runs its panic (wipe, then kill(self, SIGKILL)); the flags break it on purpose
//! lab-probe snoop PID       a same-UID attacker: ptrace, /proc/PID/mem, process_vm_readv
//! lab-probe steal SOCKET PID FD CANARY_FILE
//!     a same-UID attacker outside the supervised tree: REGISTER + GET on the socket,
//!     /proc/PID/fd/FD, and pidfd_getfd of the capability FD of PID, then a GET through it
//! lab-probe pressure MIB    touch MIB of anonymous memory, then sleep
//! lab-probe hog             allocate until the OOM killer comes
//! lab-probe watch-gone PID  print `watching`, then `gone unix_ms=T` once PID is dead or a zombie
//! ```

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use goodnight::{LockPolicy, MemoryBackend, SecretBuffer};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match argv[..] {
        ["launch", dir, name, ref rest @ ..] => launch(dir, name, rest),
        ["dumpable-crash", secret, heap] => dumpable_crash(secret, heap, false),
        ["dumpable-crash", secret, heap, "--secret-on-heap"] => dumpable_crash(secret, heap, true),
        ["hold", ref flags @ ..] => hold(flags),
        ["snoop", pid] => snoop(pid.parse().unwrap_or(-1)),
        ["steal", socket, pid, fd, canary] => steal(
            socket,
            pid.parse().unwrap_or(-1),
            fd.parse().unwrap_or(-1),
            canary,
        ),
        ["pressure", mib] => pressure(mib.parse().unwrap_or(0)),
        ["hog"] => hog(),
        ["watch-gone", pid] => watch_gone(pid),
        _ => {
            eprintln!(
                "usage: lab-probe launch|dumpable-crash|hold|snoop|steal|pressure|hog|watch-gone ..."
            );
            2
        }
    };
    std::process::exit(code);
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// Writes `text` to `path` atomically (the host polls these files).
fn publish(path: &str, text: &str) {
    let tmp = format!("{path}.tmp");
    if fs::write(&tmp, text).is_ok() {
        let _ = fs::rename(&tmp, path);
    }
}

fn launch(dir: &str, name: &str, rest: &[&str]) -> i32 {
    let (stdin, program) = match rest {
        ["--stdin", file, "--", program @ ..] => (Some(*file), program),
        ["--", program @ ..] => (None, program),
        _ => return 2,
    };
    let Some((bin, args)) = program.split_first() else {
        return 2;
    };
    let open = |suffix: &str| File::create(format!("{dir}/{name}.{suffix}"));
    let (Ok(out), Ok(log)) = (open("out"), open("log")) else {
        return 1;
    };
    // The program reads FILE from a pipe, as a user pipes a secret in (the
    // VMs' 9p share cannot be read into secret memory: EFAULT).
    let feed = match stdin.map(fs::read) {
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(_)) => return 1,
        None => None,
    };
    let mut command = Command::new(bin);
    let stdin = if feed.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    command.args(args).stdin(stdin).stdout(out).stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            publish(&format!("{dir}/{name}.exit"), &format!("spawn-error={e}\n"));
            return 1;
        }
    };
    if let (Some(bytes), Some(mut pipe)) = (feed, child.stdin.take()) {
        // Dropping the pipe is the EOF the program reads up to.
        let _ = pipe.write_all(&bytes);
    }
    publish(&format!("{dir}/{name}.pid"), &format!("{}\n", child.id()));
    let status = child.wait();
    let at = unix_ms();
    let ending = match status {
        Ok(status) => match status.signal() {
            Some(signal) => format!("signal={signal}"),
            None => format!("exit={}", status.code().unwrap_or(-1)),
        },
        Err(e) => format!("wait-error={e}"),
    };
    publish(
        &format!("{dir}/{name}.exit"),
        &format!("{ending} unix_ms={at}\n"),
    );
    0
}

/// A dumpable process holding the same `SecretBuffer` the daemon uses and a
/// heap copy of another canary (the control): it aborts, and its core shows
/// what `MADV_DONTDUMP` kept out.
fn dumpable_crash(secret_file: &str, heap_file: &str, secret_on_heap: bool) -> i32 {
    let (Ok(secret_src), Ok(mut heap_src)) = (File::open(secret_file), File::open(heap_file))
    else {
        eprintln!("cannot open the canary files");
        return 1;
    };
    let Some(mut secret) = locked_secret_buffer() else {
        return 1;
    };
    if let Err(e) = secret.read_from(secret_src.as_fd()) {
        eprintln!("{e}");
        return 1;
    }
    let mut heap = Vec::new();
    let _ = heap_src.read_to_end(&mut heap);
    let heap = std::hint::black_box(heap);
    // The deliberate bug: the secret also kept in ordinary, dumped memory.
    let stray = std::hint::black_box(secret_on_heap.then(|| secret.expose().to_vec()));
    println!(
        "holding {} secret bytes (dumpable={}) and {} heap bytes; aborting",
        secret.len(),
        goodnight::is_dumpable().unwrap_or(false),
        heap.len()
    );
    let _ = std::io::stdout().flush();
    let _ = std::hint::black_box(&stray);
    std::process::abort()
}

/// A buffer of the locked backend: what it keeps out of a core and off the
/// heap is what the observer can see (secret memory would hide the canary
/// from it anyway).
fn locked_secret_buffer() -> Option<SecretBuffer> {
    SecretBuffer::with_backend(4096, LockPolicy::Required, MemoryBackend::Locked)
        .map_err(|e| eprintln!("{e}"))
        .ok()
}

/// A daemon stand-in for the lab's can-fail tests: the same panic order as
/// `dazai` (wipe, then `kill(self, SIGKILL)`), with flags that break it.
fn hold(flags: &[&str]) -> i32 {
    let skip_wipe = flags.contains(&"--skip-wipe");
    let heap_copy = flags.contains(&"--heap-copy");
    let leave_half = flags.contains(&"--leave-half");
    let unmap_unwiped = flags.contains(&"--unmap-unwiped");
    let _ = goodnight::forbid_core_dumps_and_tracing();
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGUSR2);
    if signals.thread_block().is_err() {
        return 1;
    }
    let Some(mut secret) = locked_secret_buffer() else {
        return 1;
    };
    if let Err(e) = secret.read_from(std::io::stdin().as_fd()) {
        eprintln!("{e}");
        return 1;
    }
    // The deliberate bug: a stray copy of the secret on the heap.
    let stray = heap_copy.then(|| std::hint::black_box(secret.expose().to_vec()));
    // The deliberate bug: a second locked, no-dump copy that the panic
    // unmaps without zeroing (a scan at the end cannot see unmapped pages).
    let second = if unmap_unwiped {
        match LockedPage::holding(secret.expose()) {
            Some(page) => Some(page),
            None => return 1,
        }
    } else {
        None
    };
    println!("lab-probe hold ready: pid={}", std::process::id());
    let _ = std::io::stdout().flush();
    let _ = signals.wait();
    // The deliberate bug: a wipe that stops half-way leaves the second half.
    let tail = leave_half.then(|| {
        let bytes = secret.expose();
        std::hint::black_box(bytes[bytes.len() / 2..].to_vec())
    });
    if !skip_wipe {
        secret.wipe();
    }
    if let Some(page) = second {
        page.unmap_unwiped();
    }
    let _ = std::hint::black_box(&stray);
    let _ = std::hint::black_box(&tail);
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGKILL);
    1
}

/// A page of its own, locked and left out of core dumps: the shape of a
/// secret buffer, for the probe's `--unmap-unwiped` bug.
struct LockedPage {
    address: *mut libc::c_void,
}

impl LockedPage {
    const SIZE: usize = 4096;

    /// A new locked, no-dump page holding `bytes` (at most a page).
    fn holding(bytes: &[u8]) -> Option<Self> {
        // SAFETY: an anonymous private mapping of one page; nothing aliases it.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED || bytes.len() > Self::SIZE {
            return None;
        }
        // SAFETY: `address` is the page just mapped, `SIZE` bytes long, and
        // `bytes` fits in it; the two do not overlap.
        unsafe {
            libc::mlock(address, Self::SIZE);
            libc::madvise(address, Self::SIZE, libc::MADV_DONTDUMP);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), address.cast(), bytes.len());
        }
        Some(Self { address })
    }

    /// The bug itself: gives the page back to the kernel still holding the secret.
    fn unmap_unwiped(self) {
        // SAFETY: the page is ours and nothing refers to it after this.
        unsafe { libc::munmap(self.address, Self::SIZE) };
    }
}

/// What an attacker with the target's own UID gets: one JSON line.
fn snoop(pid: i32) -> i32 {
    let target = nix::unistd::Pid::from_raw(pid);
    let outcome = |result: Result<(), Errno>| match result {
        Ok(()) => "ok".to_owned(),
        Err(errno) => format!("{errno:?}"),
    };
    let attach = nix::sys::ptrace::attach(target);
    if attach.is_ok() {
        let _ = nix::sys::wait::waitpid(target, None);
        let _ = nix::sys::ptrace::detach(target, None);
    }
    let mem = File::open(format!("/proc/{pid}/mem"))
        .map(drop)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    // An address known to be mapped when maps can be read (the control);
    // for a non-dumpable target maps are refused too, and any address will do.
    let address = fs::read_to_string(format!("/proc/{pid}/maps"))
        .ok()
        .and_then(|maps| {
            maps.lines()
                .find(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .is_some_and(|p| p.starts_with('r'))
                })
                .and_then(|line| line.split('-').next().map(str::to_owned))
        })
        .and_then(|start| usize::from_str_radix(&start, 16).ok())
        .unwrap_or(0x10000);
    let mut byte = [0u8; 8];
    let local = [std::io::IoSliceMut::new(&mut byte)];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: address,
        len: 8,
    }];
    let mut local = local;
    let readv = nix::sys::uio::process_vm_readv(target, &mut local, &remote).map(drop);
    println!(
        "{}",
        json!({
            "uid": nix::unistd::getuid().as_raw(),
            "ptrace_attach": outcome(attach),
            "proc_mem": outcome(mem),
            "process_vm_readv": outcome(readv),
        })
    );
    0
}

/// What an attacker of the daemon's UID outside the supervised tree
/// obtains, each way it can try: one JSON line. `secret_bytes` counts the
/// bytes of the canary found in what came back.
fn steal(socket: &str, pid: i32, fd: i32, canary_file: &str) -> i32 {
    let canary = fs::read(canary_file).unwrap_or_default();
    let found = |bytes: &[u8]| {
        if !canary.is_empty() && bytes.windows(canary.len()).any(|w| w == canary) {
            canary.len()
        } else {
            0
        }
    };
    let register = exchange(socket, b"dazai/1 REGISTER\n");
    let get = exchange(socket, b"dazai/1 GET api\n");
    let proc_fd = File::open(format!("/proc/{pid}/fd/{fd}"))
        .map(drop)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)));
    let taken = take_descriptor(pid, fd);
    let through_taken = match &taken {
        Ok(stolen) => {
            // Use it exactly as `dazai get` would use an inherited capability.
            std::env::set_var(dazai_client::CAPABILITY_ENV, stolen.as_raw_fd().to_string());
            match dazai_client::Capability::inherited().and_then(|c| c.fetch_secret("api")) {
                Ok(secret) => json!({"secret_bytes": found(secret.expose())}),
                Err(error) => json!({"secret_bytes": 0, "error": error.to_string()}),
            }
        }
        Err(_) => json!({"secret_bytes": 0}),
    };
    let first_line = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    println!(
        "{}",
        json!({
            "uid": nix::unistd::getuid().as_raw(),
            "register": first_line(&register),
            "get": first_line(&get),
            "get_secret_bytes": found(&get),
            "proc_fd_open": match proc_fd { Ok(()) => "ok".to_owned(), Err(e) => format!("{e:?}") },
            "pidfd_getfd": match &taken { Ok(_) => "ok".to_owned(), Err(e) => format!("{e:?}") },
            "through_taken": through_taken,
        })
    );
    0
}

/// One request on a new connection; everything the daemon answers.
fn exchange(socket: &str, request: &[u8]) -> Vec<u8> {
    let mut reply = Vec::new();
    if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
        let _ = stream.write_all(request);
        let _ = stream.read_to_end(&mut reply);
    }
    reply
}

/// `pidfd_getfd(2)` of descriptor `fd` of process `pid`: what ptrace-level
/// access to a holder of the capability gives.
fn take_descriptor(pid: i32, fd: i32) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    let target = goodnight::pidfd::pidfd_open(nix::unistd::Pid::from_raw(pid))?;
    // SAFETY: the syscall takes a pidfd, a descriptor number and flags by
    // value and returns a new descriptor or -1; no memory is shared.
    let taken = unsafe { libc::syscall(libc::SYS_pidfd_getfd, target.as_raw_fd(), fd, 0) };
    if taken < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just installed this descriptor in this process.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(taken as i32) })
}

fn pressure(mib: usize) -> i32 {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    for i in 0..mib {
        blocks.push(vec![(i % 251) as u8 + 1; 1 << 20]);
    }
    println!("pressure: {mib} MiB touched");
    let _ = std::io::stdout().flush();
    let _ = std::hint::black_box(&blocks);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn hog() -> i32 {
    // Make sure the kernel picks this process, not the daemon.
    let _ = fs::write("/proc/self/oom_score_adj", "1000");
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![1u8; 1 << 20]);
        let _ = std::hint::black_box(&blocks);
    }
}

/// Polls (1 ms) rather than waits: the watched process is not our child.
fn watch_gone(pid: &str) -> i32 {
    let stat = format!("/proc/{pid}/stat");
    println!("watching");
    let _ = std::io::stdout().flush();
    loop {
        let alive = fs::read_to_string(&stat).is_ok_and(|text| {
            text.rsplit_once(") ")
                .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        });
        if !alive {
            println!("gone unix_ms={}", unix_ms());
            return 0;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
