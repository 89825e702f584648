//! A small harness for end-to-end tests of the real `dazai` binary: start a
//! daemon in a private directory, attach clients, speak the raw protocol, and
//! observe processes from the outside (`/proc`, wait statuses, files).
//!
//! The daemon is a parameter: `DAZAI_E2E_DAEMON=python` starts the Python
//! reference (`daemon/python`) wherever a test starts a daemon, so the same
//! tests check that both speak `dazai/1` alike; the `dazai` commands the tests
//! run as clients stay the Rust ones.

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

/// Which daemon a test starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// `dazai daemon`.
    Rust,
    /// `python3 -m dazai_ref daemon`, the reference in `daemon/python`.
    Python,
}

impl Implementation {
    /// The one `DAZAI_E2E_DAEMON` names: unset or `rust`, or `python`; any
    /// other value fails the test rather than quietly test the default.
    pub fn chosen() -> Self {
        match std::env::var("DAZAI_E2E_DAEMON").as_deref() {
            Err(_) | Ok("rust") => Self::Rust,
            Ok("python") => Self::Python,
            Ok(other) => panic!("DAZAI_E2E_DAEMON={other:?}: expected rust or python"),
        }
    }

    /// The daemon's command line up to its options: a program and its
    /// leading arguments.
    pub fn daemon_argv(self) -> Vec<String> {
        match self {
            Self::Rust => vec![dazai_bin().display().to_string(), "daemon".into()],
            Self::Python => vec![
                python_bin(),
                "-m".into(),
                "dazai_ref".into(),
                "daemon".into(),
            ],
        }
    }

    /// A daemon command with a clean environment for its socket.
    pub fn daemon_command(self) -> Command {
        let argv = self.daemon_argv();
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]).env_remove("DAZAI_SOCKET");
        if self == Self::Python {
            command.env("PYTHONPATH", python_package_dir());
        }
        command
    }

    /// The daemon's command as words for `sh -c` (paths hold no spaces here).
    pub fn daemon_shell_words(self) -> String {
        let argv = self.daemon_argv().join(" ");
        match self {
            Self::Rust => argv,
            Self::Python => format!("env PYTHONPATH={} {argv}", python_package_dir().display()),
        }
    }
}

/// The Python interpreter for the reference: `DAZAI_E2E_PYTHON` (CI's venv),
/// else `python3`.
pub fn python_bin() -> String {
    std::env::var("DAZAI_E2E_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Where the reference's package `dazai_ref` lies.
pub fn python_package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/python")
}

/// The daemon command of the implementation `DAZAI_E2E_DAEMON` chose.
pub fn daemon_command() -> Command {
    Implementation::chosen().daemon_command()
}

/// `dazai daemon --socket SOCKET --pidfile PIDFILE` where it must refuse to
/// start: exit status 7 and a one-line error, which is returned.
pub fn refused_start(socket: &Path, pidfile: &Path) -> String {
    let output = daemon_command()
        .arg("--socket")
        .arg(socket)
        .arg("--pidfile")
        .arg(pidfile)
        .output()
        .expect("run dazai daemon");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(7), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

/// The start of a supervised program's script that makes a tree: the
/// program, a child of it, and a grandchild that left the process group with
/// `setsid`. Each writes its pid to a file (`program.pid`, `child.pid`,
/// `escaped.pid`); the caller ends the script (`wait`, or an exit).
pub const SUPERVISED_TREE: &str = r#"
echo $$ > "$DIR/program.pid"
sleep 600 & echo $! > "$DIR/child.pid"
setsid sh -c 'echo $$ > "$DIR/escaped.pid"; exec sleep 600' &
"#;

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
    implementation: Implementation,
    args: Vec<String>,
    exec: Vec<String>,
    envs: Vec<(String, String)>,
    mcp_tools: Option<String>,
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
            implementation: Implementation::chosen(),
            args: Vec::new(),
            exec: Vec::new(),
            envs: Vec::new(),
            mcp_tools: None,
        }
    }

    /// Starts `implementation` whatever `DAZAI_E2E_DAEMON` chose.
    pub fn implementation(mut self, implementation: Implementation) -> Self {
        self.implementation = implementation;
        self
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
    pub fn exec_shell(self, script: &str) -> Self {
        self.exec(&["/bin/sh", "-c", script])
    }

    /// Supervises the MCP executor, `dazai mcp serve`, serving `tools` (written
    /// to `$DIR/tools.toml`).
    pub fn mcp_tools(mut self, tools: &str) -> Self {
        self.mcp_tools = Some(tools.to_owned());
        self
    }

    /// Sets an environment variable of the daemon (and so of its program).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Supervises the program `argv` (it sees `$DIR`, the daemon's directory).
    pub fn exec(mut self, argv: &[&str]) -> Self {
        self.exec = argv.iter().map(|arg| arg.to_string()).collect();
        self
    }

    /// Starts the daemon and waits for its ready line.
    pub fn start(mut self) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("dazai-e2e")
            .tempdir()
            .expect("tempdir");
        if let Some(tools) = &self.mcp_tools {
            let path = dir.path().join("tools.toml");
            fs::write(&path, tools).expect("write tools.toml");
            self.exec = vec![
                dazai_bin().display().to_string(),
                "mcp".into(),
                "serve".into(),
                "--tools".into(),
                path.display().to_string(),
            ];
        }
        let socket = dir.path().join("dazai.sock");
        let log = fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let mut command = self.implementation.daemon_command();
        command
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
        Daemon::ready(child, dir, socket, ready_line)
    }
}

impl Daemon {
    /// The daemon started as `child`, checked to have printed its ready line.
    fn ready(child: Child, dir: TempDir, socket: PathBuf, ready_line: String) -> Daemon {
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

/// `dazai mcp` under test, driven by a scripted MCP client over its stdin and
/// stdout that records every line both ways as a transcript.
pub struct McpClient {
    /// The `dazai mcp` relay process the agent launches.
    pub child: Child,
    /// The session process the executor started for this relay.
    pub session: i32,
    heartbeat: Option<Child>,
    stdin: Option<std::process::ChildStdin>,
    lines: mpsc::Receiver<String>,
    transcript: Vec<String>,
    dir: PathBuf,
}

impl McpClient {
    /// Starts `dazai mcp` (the relay) for a daemon started with
    /// [`DaemonBuilder::mcp_tools`], with a heartbeat attached so the
    /// session's secrets are handed out, and waits until its session serves.
    pub fn start(daemon: &Daemon) -> Self {
        eventually("the executor to listen", || {
            daemon.log().contains("to agents on")
        });
        let mut command = dazai();
        command.arg("mcp").arg("--socket").arg(&daemon.socket);
        Self::spawn(daemon, command)
    }

    /// Starts `command` as the agent would launch `dazai mcp`, with `$DIR`
    /// set to the daemon's directory and stderr to `mcp.log` there, and waits
    /// until the executor started its session (or the command exited).
    pub fn spawn(daemon: &Daemon, mut command: Command) -> Self {
        let heartbeat =
            (daemon.status()["liveness"] == "waiting").then(|| daemon.attach_client(&[]));
        let sessions_before = daemon.log().matches(SESSION_SERVES).count();
        let log = fs::File::create(daemon.path("mcp.log")).expect("mcp.log");
        let mut child = command
            .env("DIR", daemon.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn dazai mcp");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        eventually(
            "the executor to start a session (or dazai mcp to exit)",
            || {
                daemon.log().matches(SESSION_SERVES).count() > sessions_before
                    || child.try_wait().ok().flatten().is_some()
            },
        );
        let session = daemon
            .log()
            .lines()
            .filter(|line| line.contains(SESSION_SERVES))
            .nth(sessions_before)
            .and_then(|line| line.split("(pid ").nth(1))
            .and_then(|rest| rest.split(',').next())
            .and_then(|pid| pid.parse().ok())
            .unwrap_or(0);
        Self {
            child,
            session,
            heartbeat,
            stdin,
            lines,
            transcript: Vec::new(),
            dir: daemon.dir.path().to_owned(),
        }
    }

    /// The pid of the `dazai mcp` relay.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the relay logged on stderr, then the daemon's log, where the
    /// executor and its sessions write.
    pub fn log(&self) -> String {
        let relay = fs::read_to_string(self.dir.join("mcp.log")).unwrap_or_default();
        let daemon = fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        format!("{relay}{daemon}")
    }

    /// Sends one message as one line.
    pub fn send(&mut self, message: serde_json::Value) {
        let line = message.to_string();
        self.transcript.push(format!("> {line}"));
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to dazai mcp");
    }

    /// The next line `dazai mcp` writes, parsed; fails the test after [`PATIENCE`].
    pub fn receive(&mut self) -> serde_json::Value {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no reply from dazai mcp; log: {}", self.log()));
        self.transcript.push(format!("< {line}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Sends a request and returns the reply.
    pub fn request(&mut self, message: serde_json::Value) -> serde_json::Value {
        self.send(message);
        self.receive()
    }

    /// Everything sent (`>`) and received (`<`), one line each, with the
    /// daemon's directory written as `$DIR`.
    pub fn transcript(&self) -> String {
        let dir = self.dir.display().to_string();
        self.transcript
            .iter()
            .map(|line| line.replace(&dir, "$DIR"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Closes `dazai mcp`'s stdin (end of the session).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(heartbeat) = &mut self.heartbeat {
            stop(heartbeat);
        }
    }
}

/// What a session logs when it starts serving (the daemon's log holds it:
/// the executor and its sessions write to the daemon's stderr).
const SESSION_SERVES: &str = ", registered with the daemon at ";

// Helpers of the abuse and fault tests (tests/abuse.rs, tests/faults.rs).

/// The secret a guarded daemon holds: a reply or a log line that shows it is a leak.
pub const CANARY: &str = "canary-robustness-5e1f9a";

/// The uid (and gid) of `nobody`: "another user" for the tests that need one.
pub const NOBODY: u32 = 65534;

/// Whether the tests run as root, which they need to act as another user
/// (CI runs as root; elsewhere the lab is the place for those tests).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A supervised program that fetches secret `api` with `dazai get` each time
/// `$DIR/fetch` appears, into `$DIR/fetched`: the way a test reads the
/// secret back through the daemon without registering itself.
pub fn fetcher_script() -> String {
    format!(
        r#"echo $$ > "$DIR/program.pid"
while :; do
    if [ -e "$DIR/fetch" ]; then
        rm -f "$DIR/fetch"
        {} get api > "$DIR/fetched.part" 2>&1
        mv "$DIR/fetched.part" "$DIR/fetched"
    fi
    sleep 0.05
done"#,
        dazai_bin().display()
    )
}

/// User time plus system time a process has used, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("stat format")
        .1
        .split(' ')
        .collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3) here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// How many file descriptors a process holds.
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

impl Daemon {
    /// The secret as the supervised [`fetcher_script`] gets it from the daemon.
    pub fn fetch_secret(&self) -> String {
        let fetched = self.path("fetched");
        let _ = fs::remove_file(&fetched);
        fs::write(self.path("fetch"), "").expect("ask the fetcher");
        eventually("the supervised program to fetch the secret", || {
            exists(&fetched)
        });
        fs::read_to_string(&fetched).expect("fetched secret")
    }

    /// Whether the daemon process is still running (not reaped, not a zombie).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none() && is_alive(self.pid)
    }
}

/// A daemon under attack: it holds [`CANARY`] as secret `api`, runs with
/// `--ping-timeout 5` (a loop stalled that long loses the session), supervises
/// the [`fetcher_script`], and a real `dazai client` holds its heartbeat.
pub struct Guarded {
    /// The daemon.
    pub daemon: Daemon,
    /// The `dazai client` holding the heartbeat.
    pub client: Child,
}

impl Guarded {
    /// Starts the daemon (with `extra` daemon arguments) and attaches the client.
    pub fn start(extra: &[&str]) -> Self {
        let daemon = DaemonBuilder::new()
            .secret("api", CANARY)
            .args(&["--ping-timeout", "5"])
            .args(extra)
            .exec_shell(&fetcher_script())
            .start();
        daemon.read_pid_file("program.pid");
        let client = daemon.attach_client(&[]);
        Self { daemon, client }
    }

    /// The heartbeat and the secret are as they were: the daemon runs, armed
    /// and attached to the same client, which still runs; the secret is held,
    /// locked, and reads back whole; nothing panicked and nothing leaked.
    pub fn assert_untouched(&mut self) {
        assert!(
            self.daemon.is_running(),
            "the daemon ended; log: {}",
            self.daemon.log()
        );
        assert!(
            self.client.try_wait().expect("try_wait").is_none(),
            "the heartbeat client ended; log: {}",
            self.daemon.log()
        );
        let status = self.daemon.status();
        assert_eq!(status["liveness"], "attached", "{status}");
        assert_eq!(status["armed"], true, "{status}");
        assert_eq!(status["heartbeat"]["pid"], self.client.id(), "{status}");
        assert_eq!(status["secrets"][0]["bytes"], CANARY.len(), "{status}");
        assert_eq!(status["secrets"][0]["locked"], true, "{status}");
        assert_eq!(self.daemon.fetch_secret(), CANARY, "the secret changed");
        let log = self.daemon.log();
        assert!(!log.contains("PANIC"), "{log}");
        assert!(!log.contains(CANARY), "the log leaked the secret: {log}");
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        stop(&mut self.client);
    }
}

impl DaemonBuilder {
    /// Starts the daemon as user `uid` (group `uid`), in a directory that user
    /// owns; needs root. Without root's rights the daemon gets no cgroup, so
    /// the panic reaches its tree by process group only.
    pub fn start_as(self, uid: u32) -> Daemon {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new()
            .prefix("dazai-e2e-user")
            .tempdir()
            .expect("tempdir");
        let owner = Some(nix::unistd::Uid::from_raw(uid));
        let group = Some(nix::unistd::Gid::from_raw(uid));
        nix::unistd::chown(dir.path(), owner, group).expect("chown the directory");
        let socket = dir.path().join("dazai.sock");
        let log = fs::File::create(dir.path().join("daemon.log")).expect("log file");
        let mut command = self.implementation.daemon_command();
        command
            .arg("--socket")
            .arg(&socket)
            .args(&self.args)
            .env("DIR", dir.path())
            .env("DAZAI_SOCKET", &socket)
            .uid(uid)
            .gid(uid)
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
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut ready_line = String::new();
        let _ = stdout.read_line(&mut ready_line);
        Daemon::ready(child, dir, socket, ready_line)
    }
}
