//! The single-threaded event loop: one `poll(2)` over the signalfd, the
//! listening socket, the heartbeat and the control connections. It sleeps in
//! the kernel until something happens; it wakes on a timer only while a
//! deadline (ping timeout, grace, arm timeout, a stalled connection) is running.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use dazai_client::protocol::{self, ProtocolError, Reply, Request, PING, STANDING_BY};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::sys::wait::WaitStatus;
use nix::unistd::{getpgid, Pid, Uid};

use super::capability::{Arrival, CapableRequest, Door};
use super::endpoint::Endpoint;
use super::framing::{receive, send, LineBuffer, Received};
use super::panic::{panic_sequence, PanicReason};
use super::registry::Registry;
use super::secrets::Vault;
use super::status::{Hardening, HeartbeatStatus, SecretStatus, Status, SupervisedStatus};
use super::supervisor::Supervised;
use crate::confinement::Confinement;
use crate::log::{utc_timestamp, Log};

/// A control connection that has not sent a full request by then is dropped.
const CONTROL_DEADLINE: Duration = Duration::from_secs(3);
/// At most this many control connections wait at once; more get `ERR busy`.
const MAX_CONTROLS: usize = 64;
/// At most this many `WATCH` connections are held at once; more get `ERR busy`.
const MAX_WATCHERS: usize = 64;
/// At most this many heartbeats stand by (one a login); more get `ERR busy`.
const MAX_STANDBYS: usize = 8;
/// After `accept(2)` fails (EMFILE: out of descriptors), the listener is left
/// out of the poll set this long: it stays readable, so polling it would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);
/// A `GET` that arrives before a heartbeat has armed the switch waits this
/// long at most (less if the arm timeout comes first), then is refused.
const UNARMED_GET_WAIT: Duration = Duration::from_secs(10);
/// At most this many `GET`s wait for the switch to be armed; more are refused.
const MAX_PENDING_GETS: usize = 64;
/// At most this many capability messages are taken per wake-up, so a flood
/// from the tree cannot keep the loop from the heartbeat and the signals.
const DOOR_BATCH: usize = 16;

/// The configured timeouts.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// `--ping-timeout`.
    pub ping: Option<Duration>,
    /// `--grace` (zero: none).
    pub grace: Duration,
    /// `--arm-timeout`.
    pub arm: Option<Duration>,
}

/// Where the session stands.
enum Liveness {
    /// No heartbeat has attached yet: nothing to lose.
    Waiting { arm_deadline: Option<Instant> },
    /// A heartbeat is attached (the daemon is armed).
    Attached,
    /// The session was lost; a heartbeat may re-attach until the deadline.
    Grace {
        deadline: Instant,
        reason: PanicReason,
    },
}

/// The heartbeat connection.
struct Heartbeat {
    stream: UnixStream,
    lines: LineBuffer,
    pid: i32,
    since: SystemTime,
    last_ping: Instant,
}

/// A connection that has not sent its request yet.
struct Control {
    stream: UnixStream,
    lines: LineBuffer,
    pid: i32,
    /// The peer itself, from `SO_PEERPIDFD` (Linux >= 6.5): a `REGISTER` of
    /// the caller holds this, not a pid that may have been reused.
    pidfd: Option<OwnedFd>,
    deadline: Instant,
}

/// A `GET` through the capability that waits for the switch to be armed.
struct PendingGet {
    reply: UnixStream,
    name: String,
    pid: i32,
    deadline: Instant,
}

/// A connection held silent: a `WATCH`, held until the daemon ends so its
/// peer (`dazai mcp`) learns of the end as end of file, or a standby
/// heartbeat, held until it takes the heartbeat over.
struct Held {
    stream: UnixStream,
    pid: i32,
}

/// What the poll set's entries stand for.
#[derive(Clone, Copy)]
enum Source {
    Signals,
    Listener,
    Door,
    Heartbeat,
    Control(usize),
    Watcher(usize),
    Standby(usize),
}

/// Whether a held connection (`what`) is over: its peer closed it, or broke
/// its silence, which is answered with an error before it is closed.
fn held_connection_ends(held: &Held, what: &str) -> bool {
    let mut byte = [0u8; 1];
    match (&held.stream).read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            false
        }
        Ok(1..) => {
            let reply = Reply::Err(format!("{what} carries nothing; closing it"));
            let _ = send(&held.stream, &reply, &[]);
            true
        }
        Ok(0) | Err(_) => true,
    }
}

/// The daemon's state while it runs.
pub struct EventLoop {
    log: Log,
    signals: SignalFd,
    endpoint: Endpoint,
    vault: Vault,
    supervised: Option<Supervised>,
    /// The daemon's end of the capability, while the tree holds the other.
    door: Option<Door>,
    pending_gets: Vec<PendingGet>,
    /// Started by `dazai run`, which relays SIGINT, SIGTERM and SIGHUP to the program.
    under_run: bool,
    registry: Registry,
    timeouts: Timeouts,
    hardening: Hardening,
    confinement: Confinement,
    liveness: Liveness,
    armed: bool,
    heartbeat: Option<Heartbeat>,
    controls: Vec<Control>,
    watchers: Vec<Held>,
    /// Heartbeats of other sessions, first come first promoted.
    standbys: Vec<Held>,
    /// Until when the listener is not polled, after `accept(2)` failed.
    accept_paused_until: Option<Instant>,
}

impl EventLoop {
    /// The loop over everything start-up made.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: Log,
        signals: SignalFd,
        endpoint: Endpoint,
        vault: Vault,
        supervised: Option<Supervised>,
        door: Option<Door>,
        timeouts: Timeouts,
        hardening: Hardening,
        confinement: Confinement,
        under_run: bool,
    ) -> Self {
        Self {
            liveness: Liveness::Waiting {
                arm_deadline: timeouts.arm.map(|t| Instant::now() + t),
            },
            log,
            signals,
            endpoint,
            vault,
            supervised,
            door,
            pending_gets: Vec::new(),
            under_run,
            registry: Registry::default(),
            timeouts,
            hardening,
            confinement,
            armed: false,
            heartbeat: None,
            controls: Vec::new(),
            watchers: Vec::new(),
            standbys: Vec::new(),
            accept_paused_until: None,
        }
    }

    /// Logs what start-up achieved and returns the ready line.
    pub fn announce_ready(&self) -> String {
        for step in &self.hardening.steps {
            self.log.line(format_args!("hardening: {step}"));
        }
        for replaced in &self.endpoint.replaced {
            self.log.line(format_args!("replaced {replaced}"));
        }
        for (name, secret) in self.vault.iter() {
            self.log.line(format_args!(
                "holding secret {name} ({} bytes, {})",
                secret.len(),
                secret.backend()
            ));
        }
        if let Some(supervised) = &self.supervised {
            self.log.line(format_args!(
                "supervising pid {} in process group {} (panic kills it by {}{})",
                supervised.program,
                supervised.pgid(),
                supervised.kill_mechanism(),
                supervised
                    .cgroup_unavailable
                    .as_deref()
                    .map(|why| format!("; no cgroup: {why}"))
                    .unwrap_or_default()
            ));
        }
        let memory = self.vault.memory();
        self.log
            .line(format_args!("memory: {} ({})", memory.backend, memory.note));
        let program = self
            .supervised
            .as_ref()
            .map(|s| format!(" program={}", s.program))
            .unwrap_or_default();
        format!(
            "dazai daemon ready: pid={} socket={} state=waiting-for-heartbeat secrets={} memory={} seccomp={}{program}",
            std::process::id(),
            self.endpoint.socket_path.display(),
            self.vault.iter().count(),
            memory.backend,
            self.confinement
        )
    }

    /// Runs until a clean exit (returns its exit code) or the panic (never returns).
    pub fn run(mut self) -> u8 {
        loop {
            let sources = self.sources();
            let revents = {
                let mut fds: Vec<PollFd<'_>> = sources
                    .iter()
                    .map(|source| PollFd::new(self.fd_of(*source), PollFlags::POLLIN))
                    .collect();
                match poll(&mut fds, self.poll_timeout()) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(errno) => {
                        self.log
                            .line(format_args!("poll failed ({errno}); retrying"));
                    }
                }
                fds.iter()
                    .map(|fd| fd.revents().unwrap_or(PollFlags::empty()))
                    .collect::<Vec<_>>()
            };
            // Signals first (they may end everything), controls last and in
            // reverse so removing one does not shift the others' indices.
            for (source, events) in sources.iter().zip(&revents).rev() {
                if events.is_empty() {
                    continue;
                }
                let exit = match *source {
                    Source::Signals => self.on_signals(),
                    Source::Listener => {
                        self.accept_connections();
                        None
                    }
                    Source::Door => {
                        self.on_door_input(*events);
                        None
                    }
                    Source::Heartbeat => {
                        self.on_heartbeat_input();
                        None
                    }
                    Source::Control(index) => self.on_control_input(index),
                    Source::Watcher(index) => {
                        self.on_watcher_input(index);
                        None
                    }
                    Source::Standby(index) => {
                        self.on_standby_input(index);
                        None
                    }
                };
                if let Some(code) = exit {
                    return code;
                }
            }
            self.expire_deadlines();
        }
    }

    fn sources(&self) -> Vec<Source> {
        let mut sources = vec![Source::Signals];
        if self.accept_paused_until.is_none() {
            sources.push(Source::Listener);
        }
        if self.door.is_some() {
            sources.push(Source::Door);
        }
        if self.heartbeat.is_some() {
            sources.push(Source::Heartbeat);
        }
        sources.extend((0..self.controls.len()).map(Source::Control));
        // After the controls: a control that becomes a watcher in this round
        // only appends, so it shifts none of the watchers handled before it.
        sources.extend((0..self.watchers.len()).map(Source::Watcher));
        sources.extend((0..self.standbys.len()).map(Source::Standby));
        // Reversed iteration handles signals last otherwise: put them at the end.
        sources.rotate_left(1);
        sources
    }

    fn fd_of(&self, source: Source) -> BorrowedFd<'_> {
        match source {
            Source::Signals => self.signals.as_fd(),
            Source::Listener => self.endpoint.listener.as_fd(),
            Source::Door => self
                .door
                .as_ref()
                .map(AsFd::as_fd)
                .expect("door source only while open"),
            Source::Heartbeat => self
                .heartbeat
                .as_ref()
                .map(|h| h.stream.as_fd())
                .expect("heartbeat source only while attached"),
            Source::Control(index) => self.controls[index].stream.as_fd(),
            Source::Watcher(index) => self.watchers[index].stream.as_fd(),
            Source::Standby(index) => self.standbys[index].stream.as_fd(),
        }
    }

    /// Sleeps forever unless a deadline is running.
    fn poll_timeout(&self) -> PollTimeout {
        let next = self.deadlines().min();
        next.map_or(PollTimeout::NONE, |at| {
            let left = at.saturating_duration_since(Instant::now());
            // Round up: waking a millisecond early would only loop once more.
            let millis = left.as_micros().div_ceil(1000);
            PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
        })
    }

    fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let liveness = match &self.liveness {
            Liveness::Waiting { arm_deadline } => *arm_deadline,
            Liveness::Grace { deadline, .. } => Some(*deadline),
            Liveness::Attached => None,
        };
        let ping = self
            .heartbeat
            .as_ref()
            .zip(self.timeouts.ping)
            .map(|(heartbeat, timeout)| heartbeat.last_ping + timeout);
        liveness
            .into_iter()
            .chain(ping)
            .chain(self.accept_paused_until)
            .chain(self.controls.iter().map(|c| c.deadline))
            .chain(self.pending_gets.iter().map(|g| g.deadline))
    }

    fn on_signals(&mut self) -> Option<u8> {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match signal {
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP if self.under_run => {
                    self.log.line(format_args!(
                        "{signal} left to `dazai run`, which relays it to the program"
                    ));
                }
                Signal::SIGTERM | Signal::SIGINT => {
                    return Some(self.clean_shutdown(signal.as_ref()))
                }
                Signal::SIGUSR2 => self.panic(PanicReason::Signal(signal)),
                Signal::SIGUSR1 | Signal::SIGHUP => self.session_lost(PanicReason::Signal(signal)),
                Signal::SIGCHLD => {
                    if let Some(code) = self.on_child_status() {
                        return Some(code);
                    }
                }
                unexpected if super::UNEXPECTED_ENDINGS.contains(&unexpected) => {
                    self.panic(PanicReason::Signal(unexpected))
                }
                _ => {}
            }
        }
        None
    }

    fn accept_connections(&mut self) {
        loop {
            let stream = match self.endpoint.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog and
                    // retry after a pause (expired stalled connections free
                    // descriptors meanwhile). One log line per pause, not a flood.
                    self.log.line(format_args!(
                        "accept failed ({e}); retrying in {}ms",
                        ACCEPT_BACKOFF.as_millis()
                    ));
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            let Ok(peer) = getsockopt(&stream, PeerCredentials) else {
                continue;
            };
            if peer.uid() != Uid::current().as_raw() {
                let _ = send(
                    &stream,
                    &Reply::Err(format!(
                        "refused: peer uid {} is not the daemon's uid {}",
                        peer.uid(),
                        Uid::current()
                    )),
                    &[],
                );
                self.log.limited(
                    "foreign peer",
                    format_args!(
                        "refused a connection from uid {} (pid {})",
                        peer.uid(),
                        peer.pid()
                    ),
                );
                continue;
            }
            if self.controls.len() >= MAX_CONTROLS {
                let _ = send(
                    &stream,
                    &Reply::Err("busy: too many open connections; retry".into()),
                    &[],
                );
                continue;
            }
            if stream.set_nonblocking(true).is_ok() {
                // Never inherited: the sealed daemon forks and execs nothing.
                let pidfd = goodnight::pidfd::peer_pidfd(stream.as_fd()).ok();
                self.controls.push(Control {
                    stream,
                    lines: LineBuffer::default(),
                    pid: peer.pid(),
                    pidfd,
                    deadline: Instant::now() + CONTROL_DEADLINE,
                });
            }
        }
    }

    fn on_heartbeat_input(&mut self) {
        let Some(heartbeat) = self.heartbeat.as_mut() else {
            return;
        };
        if let Received::Closed = receive(&heartbeat.stream, &mut heartbeat.lines) {
            return self.session_lost(PanicReason::HeartbeatClosed);
        }
        loop {
            match heartbeat.lines.next_line() {
                Ok(None) => return,
                Ok(Some(line)) if line == PING.as_bytes() => {
                    heartbeat.last_ping = Instant::now();
                    if send(&heartbeat.stream, &Reply::Pong, &[]).is_err() {
                        return self.session_lost(PanicReason::HeartbeatClosed);
                    }
                }
                Ok(Some(_)) | Err(_) => {
                    let _ = send(
                        &heartbeat.stream,
                        &Reply::Err(
                            "only PING is allowed on the heartbeat; treating the session as lost"
                                .into(),
                        ),
                        &[],
                    );
                    return self.session_lost(PanicReason::HeartbeatGarbage);
                }
            }
        }
    }

    /// `Some(code)` when the request ends the daemon (`STOP`).
    fn on_control_input(&mut self, index: usize) -> Option<u8> {
        let received = {
            let control = &mut self.controls[index];
            receive(&control.stream, &mut control.lines)
        };
        let line = self.controls[index].lines.next_line();
        match (line, received) {
            (Ok(Some(line)), _) => {
                let control = self.controls.swap_remove(index);
                return self.serve(control, &line);
            }
            (Err(error), _) => {
                let control = self.controls.swap_remove(index);
                self.refuse(&control, &error);
            }
            (Ok(None), Received::Closed) => {
                self.controls.swap_remove(index);
            }
            (Ok(None), _) => {}
        }
        None
    }

    fn refuse(&self, control: &Control, error: &ProtocolError) {
        let _ = send(&control.stream, &Reply::Err(error.to_string()), &[]);
        self.log.limited(
            "bad request",
            format_args!("refused a request from pid {}: {error}", control.pid),
        );
    }

    /// Answers one request; the connection closes afterwards unless it
    /// becomes the heartbeat. `Some(code)` ends the daemon (`STOP`).
    fn serve(&mut self, mut control: Control, line: &[u8]) -> Option<u8> {
        let request = match protocol::parse_request(line) {
            Ok(request) => request,
            Err(error) => {
                self.refuse(&control, &error);
                return None;
            }
        };
        match request {
            Request::Heartbeat => self.attach_heartbeat(control),
            Request::HeartbeatStandby => self.attach_standby(control),
            Request::Status => {
                let json = serde_json::to_string(&self.status()).unwrap_or_default();
                let _ = send(&control.stream, &Reply::Status(json), &[]);
            }
            Request::Register { pid: None } => {
                let held = control.pidfd.take();
                self.register(&control, control.pid, held, false)
            }
            Request::Register { pid: Some(pid) } => self.register(&control, pid, None, false),
            Request::RegisterGroup { leader } => self.register(&control, leader, None, true),
            Request::Watch => self.attach_watcher(control),
            Request::Get { name } => self.refuse_get_without_capability(&control, &name),
            Request::Stop if self.under_run => {
                let reply = Reply::Err(
                    "refused: this daemon belongs to `dazai run`; fix: end its program (Ctrl-C), or send SIGTERM to `dazai run`".into(),
                );
                let _ = send(&control.stream, &reply, &[]);
            }
            Request::Stop => {
                let _ = send(
                    &control.stream,
                    &Reply::Ok("stopping: secrets wiped, nothing killed".into()),
                    &[],
                );
                let why = format!("STOP request from pid {}", control.pid);
                return Some(self.clean_shutdown(&why));
            }
            Request::Panic { hard } => {
                let _ = send(&control.stream, &Reply::Ok("panic requested".into()), &[]);
                let reason = PanicReason::Request {
                    pid: control.pid,
                    hard,
                };
                if hard {
                    self.panic(reason);
                } else {
                    self.session_lost(reason);
                }
            }
        }
        None
    }

    fn attach_heartbeat(&mut self, control: Control) {
        if let Some(current) = &self.heartbeat {
            let _ = send(
                &control.stream,
                &Reply::Busy(format!("heartbeat already held by pid {}", current.pid)),
                &[],
            );
            self.log.limited(
                "second heartbeat",
                format_args!("refused a second heartbeat from pid {} (BUSY)", control.pid),
            );
            return;
        }
        let ping = self
            .timeouts
            .ping
            .map_or("none".to_owned(), |t| t.as_secs().to_string());
        let reply = Reply::Ok(format!("heartbeat attached ping-timeout={ping}"));
        if send(&control.stream, &reply, &[]).is_err() {
            return;
        }
        let rescued = matches!(self.liveness, Liveness::Grace { .. });
        self.log.line(format_args!(
            "heartbeat attached by pid {}{}",
            control.pid,
            if rescued {
                " within the grace window: panic cancelled"
            } else {
                ""
            }
        ));
        self.heartbeat = Some(Heartbeat {
            stream: control.stream,
            lines: control.lines,
            pid: control.pid,
            since: SystemTime::now(),
            last_ping: Instant::now(),
        });
        self.liveness = Liveness::Attached;
        self.armed = true;
        injected_fault();
        self.serve_pending_gets();
        // A PING sent right behind the request is already buffered.
        self.on_heartbeat_lines();
    }

    fn on_heartbeat_lines(&mut self) {
        if self.heartbeat.as_ref().is_some_and(|h| !h.lines.is_empty()) {
            self.on_heartbeat_input();
        }
    }

    fn register(&mut self, control: &Control, pid: i32, held: Option<OwnedFd>, group: bool) {
        let target = Pid::from_raw(pid);
        let what = if group { " and its process group" } else { "" };
        // The requester has the daemon's uid; registering needs the right to signal.
        if let Some(why) = self.unregistrable(target, group) {
            let reply = Reply::Err(format!(
                "cannot register pid {pid}{what}: {why}; fix: register the process that is to die with the session"
            ));
            let _ = send(&control.stream, &reply, &[]);
            return;
        }
        let reply = match kill(target, None) {
            Err(errno) => Reply::Err(format!("cannot register pid {pid}: {errno}")),
            Ok(()) if group && getpgid(Some(target)) != Ok(target) => Reply::Err(format!(
                "cannot register pid {pid} with its group: it does not lead a process group; fix: start it in its own group (setpgid(0, 0))"
            )),
            Ok(()) => match self.registry.register(target, held, group) {
                Ok(()) => {
                    self.log.line(format_args!(
                        "registered pid {pid}{what} (requested by pid {})",
                        control.pid
                    ));
                    Reply::Ok(format!("registered pid {pid}{what}"))
                }
                Err(errno) => Reply::Err(format!("cannot register pid {pid}: {errno}")),
            },
        };
        let _ = send(&control.stream, &reply, &[]);
    }

    /// Why `target` may not be registered: the panic's kills must never reach
    /// the daemon itself before its wipe and exit, nor init.
    fn unregistrable(&self, target: Pid, group: bool) -> Option<&'static str> {
        let daemon = Pid::this();
        if target.as_raw() <= 1 {
            Some("pid 1 and pids below it cannot be registered")
        } else if target == daemon {
            Some("it is the daemon itself")
        } else if group && getpgid(None) == Ok(target) {
            Some("its process group holds the daemon")
        } else {
            None
        }
    }

    /// `WATCH`: keeps the connection, silent, until the daemon ends.
    fn attach_watcher(&mut self, control: Control) {
        if self.watchers.len() >= MAX_WATCHERS {
            let _ = send(
                &control.stream,
                &Reply::Err("busy: too many watch connections; retry".into()),
                &[],
            );
            return;
        }
        let reply = Reply::Ok(
            "watching: this connection closes when the daemon ends; send nothing on it".into(),
        );
        if send(&control.stream, &reply, &[]).is_err() {
            return;
        }
        self.log
            .line(format_args!("watch attached by pid {}", control.pid));
        self.watchers.push(Held {
            stream: control.stream,
            pid: control.pid,
        });
    }

    /// A watcher closed its end (or broke the silence): let it go.
    fn on_watcher_input(&mut self, index: usize) {
        if held_connection_ends(&self.watchers[index], "a watch connection") {
            let watcher = self.watchers.swap_remove(index);
            self.log
                .line(format_args!("watch by pid {} ended", watcher.pid));
        }
    }

    /// A standby heartbeat closed its end (its session ended first), or
    /// spoke before its turn: let it go.
    fn on_standby_input(&mut self, index: usize) {
        if held_connection_ends(&self.standbys[index], "a standby heartbeat") {
            let standby = self.standbys.remove(index);
            self.log.line(format_args!(
                "standby heartbeat by pid {} ended",
                standby.pid
            ));
        }
    }

    /// `HEARTBEAT STANDBY`: a second login. It attaches at once when no
    /// heartbeat is held; otherwise it waits to take the heartbeat over when
    /// the holder's session is lost. That is the re-attach a grace window
    /// allows, made immediate, so it needs one: without it, the end of the
    /// holder's session is the panic, whoever else is logged in.
    fn attach_standby(&mut self, control: Control) {
        let Some(holder) = self.heartbeat.as_ref().map(|h| h.pid) else {
            return self.attach_heartbeat(control);
        };
        let refusal = if self.timeouts.grace.is_zero() {
            Some(format!(
                "refused: the heartbeat is held by pid {holder} and this daemon has no grace window, so the end of that session panics whoever else is logged in; fix: start the daemon with --grace SECS to let this session take over"
            ))
        } else if self.standbys.len() >= MAX_STANDBYS {
            Some("busy: too many standby heartbeats; retry".to_owned())
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let _ = send(&control.stream, &Reply::Err(refusal), &[]);
            return;
        }
        let reply = Reply::Ok(format!(
            "{STANDING_BY}: the heartbeat is held by pid {holder}; this session takes it over if that one ends"
        ));
        if send(&control.stream, &reply, &[]).is_err() {
            return;
        }
        self.log.line(format_args!(
            "standby heartbeat from pid {} (held by pid {holder})",
            control.pid
        ));
        self.standbys.push(Held {
            stream: control.stream,
            pid: control.pid,
        });
    }

    /// The heartbeat's session ended while another stands by: the first
    /// standby still there becomes the heartbeat, and the panic is cancelled.
    fn hand_over_to_standby(&mut self) {
        while self.heartbeat.is_none() && !self.standbys.is_empty() {
            let standby = self.standbys.remove(0);
            self.log.line(format_args!(
                "handing the heartbeat over to standby pid {}",
                standby.pid
            ));
            self.attach_heartbeat(Control {
                stream: standby.stream,
                lines: LineBuffer::default(),
                pid: standby.pid,
                pidfd: None,
                deadline: Instant::now(),
            });
        }
    }

    /// A `GET` on the listening socket: any process of the user's uid can
    /// connect there, so it grants nothing, whatever else the peer did.
    fn refuse_get_without_capability(&self, control: &Control, name: &str) {
        let reply = Reply::Err(format!(
            "refused: a connection to the socket grants no secret; only the supervised program and its descendants, which hold the capability ({}), may GET; fix: run the program under `dazai run` or `dazai daemon --exec` and call `dazai get` there",
            dazai_client::CAPABILITY_ENV
        ));
        let _ = send(&control.stream, &reply, &[]);
        self.log.limited(
            "get without capability",
            format_args!(
                "secret {name} refused to pid {}: no capability",
                control.pid
            ),
        );
    }

    /// Messages on the capability: each a request with its reply socket.
    fn on_door_input(&mut self, events: PollFlags) {
        for _ in 0..DOOR_BATCH {
            let Some(door) = &self.door else { return };
            match door.receive() {
                Arrival::Nothing => break,
                Arrival::Unanswerable => {}
                Arrival::Request(request) => self.serve_capable(request),
            }
        }
        if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            // Nobody holds the tree's end any more: nothing more can arrive.
            self.door = None;
        }
    }

    /// A request through the capability: only `GET` travels there.
    fn serve_capable(&mut self, request: CapableRequest) {
        let pid = getsockopt(&request.reply, PeerCredentials).map_or(0, |peer| peer.pid());
        let name = match protocol::parse_request(&request.line) {
            Ok(Request::Get { name }) => name,
            Ok(_) => {
                let reply = Reply::Err(
                    "the capability carries GET only; fix: send other requests on the socket"
                        .into(),
                );
                let _ = send(&request.reply, &reply, &[]);
                return;
            }
            Err(error) => {
                let _ = send(&request.reply, &Reply::Err(error.to_string()), &[]);
                return;
            }
        };
        match &self.liveness {
            Liveness::Attached => self.hand_out_secret(&request.reply, &name, pid),
            Liveness::Waiting { arm_deadline } => {
                let wait_ends = Instant::now() + UNARMED_GET_WAIT;
                let deadline = arm_deadline.map_or(wait_ends, |arm| arm.min(wait_ends));
                self.hold_until_armed(request.reply, name, pid, deadline);
            }
            Liveness::Grace { .. } => {
                let reply = Reply::Err(
                    "refused: the session was lost; no secret is handed out during the grace window; fix: re-attach the heartbeat (`dazai client`)".into(),
                );
                let _ = send(&request.reply, &reply, &[]);
                self.log.line(format_args!(
                    "secret {name} refused to pid {pid}: grace window"
                ));
            }
        }
    }

    /// No secret leaves before the switch is armed: the `GET` waits for the
    /// heartbeat (bounded by the arm timeout and [`UNARMED_GET_WAIT`]).
    fn hold_until_armed(&mut self, reply: UnixStream, name: String, pid: i32, deadline: Instant) {
        if self.pending_gets.len() >= MAX_PENDING_GETS {
            let _ = send(
                &reply,
                &Reply::Err("busy: too many GETs wait for the heartbeat; retry".into()),
                &[],
            );
            return;
        }
        self.pending_gets.push(PendingGet {
            reply,
            name,
            pid,
            deadline,
        });
    }

    /// Hands out the secret `name` to a holder of the capability.
    fn hand_out_secret(&self, reply: &UnixStream, name: &str, pid: i32) {
        let outcome = match self.vault.get(name) {
            None => {
                let _ = send(reply, &Reply::Err(format!("no secret named {name}")), &[]);
                "refused (no such secret)"
            }
            Some(secret) => {
                let _ = send(reply, &Reply::Secret(secret.len()), secret.expose());
                "handed out"
            }
        };
        self.log
            .line(format_args!("secret {name} {outcome} to pid {pid}"));
    }

    /// The heartbeat armed the switch: every waiting `GET` gets its answer.
    fn serve_pending_gets(&mut self) {
        for get in std::mem::take(&mut self.pending_gets) {
            self.hand_out_secret(&get.reply, &get.name, get.pid);
        }
    }

    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
        }
        match &self.liveness {
            Liveness::Waiting {
                arm_deadline: Some(deadline),
            } if now >= *deadline => self.panic(PanicReason::ArmTimeout(
                self.timeouts.arm.unwrap_or_default(),
            )),
            Liveness::Grace { deadline, reason } if now >= *deadline => {
                self.panic(PanicReason::GraceExpired(Box::new(reason.clone())))
            }
            _ => {}
        }
        if let (Some(heartbeat), Some(timeout)) = (&self.heartbeat, self.timeouts.ping) {
            if now >= heartbeat.last_ping + timeout {
                self.session_lost(PanicReason::PingTimeout(timeout));
            }
        }
        let (unarmed, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_gets)
            .into_iter()
            .partition(|get| now >= get.deadline);
        self.pending_gets = waiting;
        for get in unarmed {
            let reply = Reply::Err(
                "refused: the switch is not armed (no heartbeat attached in time); fix: start `dazai client` in this session first".into(),
            );
            let _ = send(&get.reply, &reply, &[]);
            self.log.line(format_args!(
                "secret {} refused to pid {}: not armed",
                get.name, get.pid
            ));
        }
        let (stalled, live): (Vec<_>, Vec<_>) = std::mem::take(&mut self.controls)
            .into_iter()
            .partition(|control| now >= control.deadline);
        self.controls = live;
        for control in stalled {
            let _ = send(
                &control.stream,
                &Reply::Err(format!(
                    "timeout: no complete request within {}s",
                    CONTROL_DEADLINE.as_secs()
                )),
                &[],
            );
        }
    }

    /// The session is gone (or SIGUSR1 says so): panic, unless a grace window
    /// lets a heartbeat re-attach first. Repeats during the window change nothing.
    fn session_lost(&mut self, reason: PanicReason) {
        match &self.liveness {
            Liveness::Grace { deadline, .. } => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.log.line(format_args!(
                    "{reason} during the grace window: the panic stays due in {:.1}s",
                    left.as_secs_f64()
                ));
            }
            Liveness::Attached if !self.timeouts.grace.is_zero() => {
                self.heartbeat = None;
                self.log.line(format_args!(
                    "session lost ({reason}); grace window of {}s for a heartbeat to re-attach",
                    self.timeouts.grace.as_secs()
                ));
                let heartbeat_ended = matches!(
                    reason,
                    PanicReason::HeartbeatClosed | PanicReason::PingTimeout(_)
                );
                self.liveness = Liveness::Grace {
                    deadline: Instant::now() + self.timeouts.grace,
                    reason,
                };
                // Only the holder's session ending hands over: a panic asked
                // for (signal, `dazai panic`) is not cancelled by a standby.
                if heartbeat_ended {
                    self.hand_over_to_standby();
                }
            }
            _ => self.panic(reason),
        }
    }

    fn panic(&mut self, reason: PanicReason) -> ! {
        panic_sequence(
            &reason,
            &self.registry,
            self.supervised.as_mut(),
            &mut self.vault,
            &self.log,
        )
    }

    /// SIGCHLD: the supervised program ended. An exit, or a signal that asks
    /// a program to stop (Ctrl-C, `timeout`, a hang-up), ends the one-shot
    /// lifecycle with its status, as `sudo` and `env` report it (128 + N for
    /// signal N); a crash, or SIGKILL (the OOM killer's signal, which the
    /// daemon cannot tell from any other), panics.
    fn on_child_status(&mut self) -> Option<u8> {
        match self.supervised.as_ref()?.ended()? {
            WaitStatus::Signaled(_, signal, _) if is_crash_or_kill(signal) => {
                self.panic(PanicReason::ChildKilled(signal))
            }
            WaitStatus::Signaled(_, signal, _) => {
                Some(self.end_one_shot(format_args!("was stopped by {signal}"), 128 + signal as u8))
            }
            WaitStatus::Exited(_, code) => {
                Some(self.end_one_shot(format_args!("exited with status {code}"), code as u8))
            }
            _ => None,
        }
    }

    /// The supervised program is gone: wipe, kill what it left running,
    /// remove socket, pidfile and cgroup, and exit with `code`.
    fn end_one_shot(&mut self, how: fmt::Arguments<'_>, code: u8) -> u8 {
        let wiped = self.vault.wipe_all();
        let leftovers = self
            .supervised
            .as_mut()
            .map(|supervised| format!("; killed anything it left running in {}", supervised.end()))
            .unwrap_or_default();
        self.endpoint.remove();
        self.log.line(format_args!(
            "supervised program {how}; wiped {wiped} secrets{leftovers}; exiting with {code}"
        ));
        code
    }

    /// SIGTERM/SIGINT, `STOP`: wipe, remove socket and pidfile, leave every
    /// process alive.
    fn clean_shutdown(&mut self, why: &str) -> u8 {
        let wiped = self.vault.wipe_all();
        self.endpoint.remove();
        let program = match self.supervised.as_mut().map(Supervised::release) {
            Some(true) => "; the supervised program runs on",
            Some(false) => {
                "; the supervised program could not be released and dies with the daemon"
            }
            None => "",
        };
        self.log.line(format_args!(
            "{why}: clean shutdown; wiped {wiped} secrets; removed socket and pidfile; killed nothing{program}"
        ));
        0
    }

    fn status(&self) -> Status {
        let (liveness, grace_left_secs) = match &self.liveness {
            Liveness::Waiting { .. } => ("waiting", None),
            Liveness::Attached => ("attached", None),
            Liveness::Grace { deadline, .. } => (
                "grace",
                Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .as_secs_f64(),
                ),
            ),
        };
        let secrets: Vec<SecretStatus> = self
            .vault
            .iter()
            .map(|(name, secret)| SecretStatus {
                name: name.to_owned(),
                bytes: secret.len(),
                backend: secret.backend().to_string(),
                locked: secret.is_locked(),
            })
            .collect();
        Status {
            protocol: protocol::VERSION_TOKEN,
            pid: std::process::id(),
            armed: self.armed,
            liveness,
            heartbeat: self.heartbeat.as_ref().map(|h| HeartbeatStatus {
                pid: h.pid,
                since: utc_timestamp(h.since),
            }),
            standbys: self.standbys.iter().map(|s| s.pid).collect(),
            grace_left_secs,
            ping_timeout_secs: self.timeouts.ping.map(|t| t.as_secs()),
            grace_secs: self.timeouts.grace.as_secs(),
            arm_timeout_secs: self.timeouts.arm.map(|t| t.as_secs()),
            locked_bytes: self
                .vault
                .iter()
                .filter(|(_, s)| s.is_locked())
                .map(|(_, s)| s.data_pages_len())
                .sum(),
            secrets,
            memory: self.vault.memory().backend.to_string(),
            memory_note: self.vault.memory().note.clone(),
            registered: self.registry.live_pids(),
            waiting_gets: self.pending_gets.len(),
            supervised: self.supervised.as_ref().map(|s| SupervisedStatus {
                pid: s.program.as_raw(),
                pgid: s.pgid().as_raw(),
                kill: s.kill_mechanism(),
                cgroup_unavailable: s.cgroup_unavailable.clone(),
            }),
            seccomp: self.confinement.to_string(),
            hardening: self.hardening.clone(),
        }
    }
}

/// A signal by which a program crashed or was killed outright, rather than
/// asked to stop.
fn is_crash_or_kill(signal: Signal) -> bool {
    matches!(
        signal,
        Signal::SIGKILL
            | Signal::SIGSEGV
            | Signal::SIGBUS
            | Signal::SIGILL
            | Signal::SIGFPE
            | Signal::SIGABRT
            | Signal::SIGSYS
            | Signal::SIGTRAP
    )
}

/// Test builds only (debug assertions on; never the release binary):
/// `DAZAI_TEST_FAULT=panic-on-heartbeat` makes a Rust panic at the first
/// heartbeat, with the secrets loaded and the tree running, so the tests can
/// watch what a bug in the daemon still does.
#[cfg(debug_assertions)]
fn injected_fault() {
    if std::env::var_os("DAZAI_TEST_FAULT").is_some_and(|fault| fault == "panic-on-heartbeat") {
        panic!("fault injected by DAZAI_TEST_FAULT");
    }
}

#[cfg(not(debug_assertions))]
fn injected_fault() {}
