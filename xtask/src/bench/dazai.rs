//! The `dazai` binary under measurement: a daemon in a private directory, a
//! real heartbeat client, and the raw protocol for everything else.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::process::Watched;

/// How long any single wait for the daemon may take before the bench fails.
/// It bounds a wait; it measures nothing.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// The environment variable the daemons read their one secret from.
const SECRET_VAR: &str = "DAZAI_BENCH_SECRET";

/// The binary under measurement.
pub(crate) struct Dazai {
    pub bin: PathBuf,
}

/// A running `dazai daemon`.
pub(crate) struct Daemon {
    pub process: Watched,
    pub socket: PathBuf,
    /// The line it printed when ready.
    pub ready_line: String,
    /// From just before the exec to the ready line read by the bench.
    pub startup: Duration,
    log: PathBuf,
    // Held open: the daemon must never meet a closed stdout.
    _stdout: ChildStdout,
    // The read end of a full stderr pipe, held and never read.
    _stderr_unread: Option<OwnedFd>,
}

/// Where a measured daemon's stderr goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stderr {
    /// A log file in its directory.
    Log,
    /// A pipe filled to the last byte that nobody reads (a paused pager, a
    /// stuck logger): its log lines cannot be written.
    Full,
}

impl Dazai {
    /// Starts `dazai daemon --socket DIR/dazai.sock --secret api=env:… ARGS`
    /// and waits for its ready line.
    pub(crate) fn start_daemon(&self, dir: &Path, args: &[&str]) -> Result<Daemon> {
        self.start_daemon_with(dir, args, Stderr::Log)
    }

    /// [`start_daemon`](Self::start_daemon) with its stderr as `stderr` says.
    pub(crate) fn start_daemon_with(
        &self,
        dir: &Path,
        args: &[&str],
        stderr: Stderr,
    ) -> Result<Daemon> {
        let socket = dir.join("dazai.sock");
        let log = dir.join("daemon.log");
        let mut command = Command::new(&self.bin);
        command
            .arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .args(["--secret", &format!("api=env:{SECRET_VAR}")])
            .args(args)
            .env(SECRET_VAR, "correct horse battery staple")
            .env_remove("DAZAI_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let stderr_unread = match stderr {
            Stderr::Log => {
                command.stderr(fs::File::create(&log).context("create the daemon's log")?);
                None
            }
            Stderr::Full => {
                let (unread, full) = full_pipe()?;
                command.stderr(full);
                Some(unread)
            }
        };
        let exec = Instant::now();
        let mut process = Watched::spawn(&mut command)?;
        let mut stdout = process
            .child_mut()
            .stdout
            .take()
            .context("the daemon's stdout")?;
        let ready_line = read_line(&mut stdout, PATIENCE);
        let startup = exec.elapsed();
        let ready_line = ready_line.with_context(|| {
            format!(
                "dazai daemon did not print its ready line; log: {}",
                fs::read_to_string(&log).unwrap_or_default().trim()
            )
        })?;
        let expected = format!("dazai daemon ready: pid={} ", process.pid());
        if !ready_line.starts_with(&expected) {
            bail!("unexpected ready line: {ready_line:?}");
        }
        Ok(Daemon {
            process,
            socket,
            ready_line,
            startup,
            log,
            _stdout: stdout,
            _stderr_unread: stderr_unread,
        })
    }

    /// Starts `dazai client` on the daemon's socket and waits until the
    /// daemon reports it as the heartbeat.
    pub(crate) fn attach_client(&self, daemon: &Daemon) -> Result<Watched> {
        let client = Watched::spawn(
            Command::new(&self.bin)
                .arg("client")
                .arg("--socket")
                .arg(&daemon.socket)
                .env_remove("DAZAI_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let started = Instant::now();
        while daemon.heartbeat_pid()? != Some(client.pid()) {
            if started.elapsed() > PATIENCE || client.pidfd.has_exited() {
                bail!(
                    "dazai client (pid {}) did not attach; daemon log: {}",
                    client.pid(),
                    daemon.log().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(client)
    }
}

/// A pipe holding as many bytes as it can: (its read end, its write end).
fn full_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("pipe")?;
    let capacity = fcntl(&write, FcntlArg::F_GETPIPE_SZ).context("F_GETPIPE_SZ")?;
    // One write of exactly the capacity fits an empty pipe whole.
    let filler = vec![b'.'; capacity as usize];
    let written = nix::unistd::write(&write, &filler).context("fill the pipe")?;
    if written != filler.len() {
        bail!("filled {written} of {capacity} bytes of the pipe");
    }
    Ok((read, write))
}

impl Daemon {
    /// Sends one request line on a new connection; returns the whole reply.
    pub(crate) fn request(&self, line: &str) -> Result<String> {
        let mut stream = UnixStream::connect(&self.socket)
            .with_context(|| format!("connect to {}", self.socket.display()))?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .with_context(|| format!("read the reply to {line:?}"))?;
        Ok(reply)
    }

    /// The pid holding the heartbeat, from `STATUS`.
    pub(crate) fn heartbeat_pid(&self) -> Result<Option<u32>> {
        let status = self.status()?;
        Ok(status["heartbeat"]["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok()))
    }

    /// The daemon's `STATUS` JSON.
    pub(crate) fn status(&self) -> Result<serde_json::Value> {
        let reply = self.request("dazai/1 STATUS")?;
        let json = reply
            .strip_prefix("STATUS ")
            .with_context(|| format!("not a status reply: {reply:?}"))?;
        Ok(serde_json::from_str(json)?)
    }

    /// Registers `process`, a child of the bench, so that the panic kills it.
    pub(crate) fn register(&self, process: &Watched) -> Result<()> {
        let pid = process.pid();
        // The panic SIGKILLs what is registered: only ever a bench-owned sleeper.
        if pid == std::process::id() {
            bail!("refusing to register the bench itself");
        }
        let reply = self.request(&format!("dazai/1 REGISTER {pid}"))?;
        if reply.trim_end() != format!("OK registered pid {pid}") {
            bail!("REGISTER {pid} answered {reply:?}");
        }
        Ok(())
    }

    /// The memory backend from the ready line (`memory=…`).
    pub(crate) fn memory_backend(&self) -> String {
        self.ready_line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("memory="))
            .unwrap_or("unknown")
            .to_owned()
    }

    /// Everything the daemon logged so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Reads one line from a pipe within `patience`.
fn read_line(stdout: &mut ChildStdout, patience: Duration) -> Result<String> {
    let deadline = Instant::now() + patience;
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    while !line.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no line within {} s", patience.as_secs());
        }
        let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        if poll(&mut fds, timeout)? == 0 {
            continue;
        }
        match stdout.read(&mut chunk)? {
            0 => bail!("end of file before a line"),
            n => line.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&line);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// A private scratch directory (mode 0700, as the daemon's socket directory
/// must be), removed with everything in it when dropped. Under /tmp so that
/// socket paths stay short.
pub(crate) struct Scratch {
    root: PathBuf,
}

impl Scratch {
    pub(crate) fn create() -> Result<Scratch> {
        let root = std::env::temp_dir().join(format!("dazai-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .with_context(|| format!("create {}", root.display()))?;
        Ok(Scratch { root })
    }

    /// A fresh private directory for one run.
    pub(crate) fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
