//! A small harness for end-to-end tests of the real `dazai` binary: start a
//! daemon in a private directory, attach clients, speak the raw protocol, and
//! observe processes from the outside (`/proc`, wait statuses, files).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long any single wait for an effect may take before the test fails.
/// Generous on purpose: this bounds a wait, it does not measure speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// SIGSYS: a daemon must never die by it outside the confinement tests.
pub const SIGSYS: i32 = 31;

/// The `dazai` binary under test.
pub fn dazai_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("dazai")
}

/// A `dazai` command with a clean environment for the daemon's socket.
pub fn dazai() -> Command {
    let mut command = Command::new(dazai_bin());
    command.env_remove("DAZAI_SOCKET");
    command
}

/// Polls `condition` until it holds or [`PATIENCE`] runs out.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < PATIENCE, "gave up waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`.
pub fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("kill");
}

/// Waits for a child to exit, failing the test after [`PATIENCE`].
pub fn wait_exit(child: &mut Child) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "process {} did not exit",
            child.id()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A daemon to start: a builder over `dazai daemon`'s arguments.
pub struct DaemonBuilder {
    args: Vec<String>,
    exec: Vec<String>,
    envs: Vec<(String, String)>,
}

/// A running daemon in its own temporary directory.
pub struct Daemon {
    /// The daemon process.
    pub child: Child,
    /// Its pid.
    pub pid: i32,
    /// The private directory holding socket, pidfile, log and test files.
    pub dir: TempDir,
    /// The socket path.
    pub socket: PathBuf,
    /// The ready line it printed.
    pub ready_line: String,
    /// Whether the test expects (and has checked) the daemon's death.
    pub reaped: Option<ExitStatus>,
}

impl Default for DaemonBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DaemonBuilder {
    /// `dazai daemon` with no options.
    pub fn new() -> Self {
        Self {
            args: Vec::new(),
            exec: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Adds raw daemon arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Holds `NAME=value` as a secret, passed through the environment.
    pub fn secret(mut self, name: &str, value: &str) -> Self {
        let var = format!(
            "DAZAI_TEST_SECRET_{}",
            name.to_uppercase().replace(['.', '-'], "_")
        );
        self.args.push("--secret".into());
        self.args.push(format!("{name}=env:{var}"));
        self.envs.push((var, value.into()));
        self
    }

    /// Supervises `sh -c SCRIPT` (the script sees `$DIR`, the daemon's directory).
    pub fn exec_shell(mut self, script: &str) -> Self {
        self.exec = vec!["/bin/sh".into(), "-c".into(), script.into()];
        self
    }

    /// Starts the daemon and waits for its ready line.
    pub fn start(self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("dazai-e2e")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("dazai.sock");
        let log = fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let mut command = dazai();
        command
            .arg("daemon")
            .arg("--socket")
            .arg(&socket)
            .args(&self.args)
            .env("DIR", dir.path())
            .env("DAZAI_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        if !self.exec.is_empty() {
            command.arg("--exec").args(&self.exec);
        }
        let mut child = command.spawn().expect("spawn dazai daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let ready_line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        let pid = child.id() as i32;
        let daemon = Daemon {
            child,
            pid,
            dir,
            socket,
            ready_line,
            reaped: None,
        };
        assert!(
            daemon.ready_line.starts_with("dazai daemon ready:"),
            "daemon did not get ready: {:?}; log: {}",
            daemon.ready_line,
            daemon.log()
        );
        daemon
    }
}

impl Daemon {
    /// A path inside the daemon's private directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Starts `dazai client` holding the heartbeat, and waits until the daemon
    /// reports it attached.
    pub fn attach_client(&self, extra: &[&str]) -> Child {
        let before = self.log().matches("heartbeat attached").count();
        let child = dazai()
            .arg("client")
            .arg("--socket")
            .arg(&self.socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dazai client");
        eventually("the client's heartbeat to attach", || {
            self.log().matches("heartbeat attached").count() > before
        });
        child
    }

    /// Opens a raw connection to the socket.
    pub fn connect(&self) -> UnixStream {
        let stream = UnixStream::connect(&self.socket).expect("connect to daemon");
        stream
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        stream
    }

    /// Sends raw bytes on a new connection and returns everything the daemon
    /// answers until it closes the connection.
    pub fn exchange(&self, request: &[u8]) -> String {
        let mut stream = self.connect();
        stream.write_all(request).expect("write request");
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
    }

    /// The daemon's status as JSON.
    pub fn status(&self) -> serde_json::Value {
        let reply = self.exchange(b"dazai/1 STATUS\n");
        let json = reply
            .strip_prefix("STATUS ")
            .unwrap_or_else(|| panic!("not a status reply: {reply:?}"));
        serde_json::from_str(json).expect("status JSON")
    }

    /// Waits for the daemon to end and returns how; a death by SIGSYS fails the test.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let status = wait_exit(&mut self.child);
        assert_ne!(
            status.signal(),
            Some(SIGSYS),
            "the daemon died by SIGSYS: its seccomp allowlist misses a syscall; log: {}",
            self.log()
        );
        self.reaped = Some(status);
        status
    }

    /// The pid the supervised program reported, from the file the script wrote.
    pub fn read_pid_file(&self, name: &str) -> i32 {
        let path = self.path(name);
        eventually(&format!("{} to be written", path.display()), || {
            fs::read_to_string(&path).is_ok_and(|t| t.ends_with('\n'))
        });
        fs::read_to_string(&path)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `path` exists (without following a symlink).
pub fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Kills a helper process the test started and reaps it.
pub fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}
