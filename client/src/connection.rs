//! One connection to the daemon: send a request line, read the reply.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use goodnight::{LockPolicy, SecretBuffer, SecretError};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::getuid;

use crate::protocol::{self, ProtocolError, Reply, Request, MAX_REPLY_LINE};

/// How long a request waits for its reply: longer than the daemon ever takes
/// to answer one (its longest wait, a `GET` before the heartbeat attaches, is
/// 10 s), so only a daemon that is stuck, or something else listening on the
/// socket, hits it. It bounds each read and write on the connection, which
/// is the whole reply: the daemon writes a reply at once.
pub const REPLY_DEADLINE: Duration = Duration::from_secs(15);

/// Everything that can go wrong talking to the daemon, each with a fix.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing answers on the socket.
    NoDaemon {
        /// The socket path tried.
        path: PathBuf,
        /// Why the connection failed.
        cause: io::Error,
    },
    /// Another heartbeat is already attached.
    Busy(String),
    /// The daemon refused the request; its reason.
    Refused(String),
    /// The daemon's reply did not parse.
    Protocol(ProtocolError),
    /// The daemon closed the connection.
    DaemonGone,
    /// No reply came within the deadline.
    NoReply {
        /// The socket path, for a request sent there (not through the capability).
        path: Option<PathBuf>,
        /// How long the request waited.
        deadline: Duration,
    },
    /// Reading or writing the socket failed.
    Io(io::Error),
    /// The secret could not be held in locked memory.
    Secret(SecretError),
    /// This process holds no capability, so it can obtain no secret.
    NoCapability {
        /// Why there is none.
        why: String,
    },
    /// The socket belongs to another user: nothing is sent to it.
    ForeignDaemon {
        /// The socket path.
        path: PathBuf,
        /// The uid of the process that listens on it.
        uid: u32,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDaemon { path, cause } => write!(
                f,
                "no daemon answers on {} ({cause}); fix: start `dazai daemon`, or pass --socket / set DAZAI_SOCKET to its socket",
                path.display()
            ),
            Self::Busy(text) => write!(
                f,
                "the daemon refused the heartbeat: {text}; fix: one session holds the heartbeat at a time, end the other `dazai client` first"
            ),
            Self::Refused(text) => write!(f, "the daemon refused: {text}"),
            Self::Protocol(error) => write!(
                f,
                "the daemon's reply is not understood ({error}); fix: use the same dazai version for daemon and client"
            ),
            Self::DaemonGone => write!(f, "the daemon closed the connection (it panicked or shut down)"),
            Self::NoReply {
                path: Some(path),
                deadline,
            } => write!(
                f,
                "the daemon at {path} did not answer within {deadline:?}; fix: check `dazai status`, or that nothing else listens on {path}",
                path = path.display()
            ),
            Self::NoReply {
                path: None,
                deadline,
            } => write!(
                f,
                "the daemon did not answer through the capability within {deadline:?}; fix: check `dazai status`"
            ),
            Self::Io(error) => write!(f, "talking to the daemon failed: {error}"),
            Self::Secret(error) => write!(f, "{error}"),
            Self::NoCapability { why } => write!(
                f,
                "this process holds no capability to obtain a secret ({why}); fix: only the program the daemon supervises and its descendants may, so start it with `dazai run` or `dazai daemon --exec`"
            ),
            Self::ForeignDaemon { path, uid } => write!(
                f,
                "{} is served by uid {uid}, not by you; nothing was sent to it; fix: pass --socket / set DAZAI_SOCKET to your own daemon's socket",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

/// A connection to the daemon's socket.
pub struct Connection {
    stream: UnixStream,
    /// The socket path, for errors (none for a reply over the capability).
    path: Option<PathBuf>,
    /// How long a request waits for its reply.
    deadline: Duration,
}

impl Connection {
    /// Connects to the daemon listening on `path`, once `SO_PEERCRED` shows
    /// it runs as this user: a request can say which process asks and a
    /// heartbeat ties the session to whoever listens, so neither goes to
    /// another user's socket.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
        let stream = connect_to_own(path)?;
        Ok(Self {
            path: Some(path.to_owned()),
            ..Self::from_stream(stream)
        })
    }

    /// A connection over a stream that is already connected to the daemon.
    pub(crate) fn from_stream(stream: UnixStream) -> Self {
        Self {
            stream,
            path: None,
            deadline: REPLY_DEADLINE,
        }
    }

    /// The same connection with another reply deadline (not zero) than
    /// [`REPLY_DEADLINE`].
    pub fn with_deadline(self, deadline: Duration) -> Self {
        Self { deadline, ..self }
    }

    /// The socket, for polling.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one line (the newline is added).
    pub fn send_line(&mut self, line: &str) -> Result<(), ClientError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.stream.write_all(&bytes)?;
        Ok(())
    }

    /// Sends a request line and reads the reply line, within the deadline.
    ///
    /// A heartbeat or watch connection is held open afterwards, for as long
    /// as the session or the daemon lives: the deadline covers its request
    /// alone (the heartbeat polls, a watch waits for the end).
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.set_timeouts(Some(self.deadline))?;
        let reply = self.send_and_read(request)?;
        if matches!(
            request,
            Request::Heartbeat | Request::HeartbeatStandby | Request::Watch
        ) {
            self.set_timeouts(None)?;
        }
        Ok(reply)
    }

    fn send_and_read(&mut self, request: &Request) -> Result<Reply, ClientError> {
        match self.send_line(&request.to_string()) {
            Ok(()) => self.read_reply(),
            // The daemon answers some connections and closes them before
            // reading a byte (a peer of another uid, too many connections):
            // the write then fails, but the answer is there to read.
            Err(ClientError::Io(error))
                if matches!(
                    error.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                self.read_reply().map_err(|_| ClientError::Io(error))
            }
            Err(ClientError::Io(error)) => Err(self.io_error(error)),
            Err(other) => Err(other),
        }
    }

    /// Bounds every read and write on the stream (`None`: no bound).
    fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// A timeout (EAGAIN under SO_RCVTIMEO/SO_SNDTIMEO) is the daemon not answering.
    fn io_error(&self, error: io::Error) -> ClientError {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::NoReply {
                path: self.path.clone(),
                deadline: self.deadline,
            },
            _ => ClientError::Io(error),
        }
    }

    /// Reads one reply line.
    ///
    /// Byte by byte on purpose: a buffered reader would pull the secret bytes
    /// that follow a `SECRET` line into an ordinary heap buffer.
    pub fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = Vec::with_capacity(64);
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Err(ClientError::DaemonGone),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if line.len() >= MAX_REPLY_LINE => {
                    return Err(ClientError::Protocol(ProtocolError::LineTooLong))
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            }
        }
        protocol::parse_reply(&line).map_err(ClientError::Protocol)
    }

    /// Reads the reply to a `GET` and the secret behind it, straight into a
    /// new locked buffer.
    pub(crate) fn receive_secret(mut self) -> Result<SecretBuffer, ClientError> {
        self.set_timeouts(Some(self.deadline))?;
        let len = match self.read_reply()? {
            Reply::Secret(len) => len,
            other => return Err(unexpected(other)),
        };
        let mut secret =
            SecretBuffer::new(len.max(1), LockPolicy::Required).map_err(ClientError::Secret)?;
        let held = secret
            .read_from(self.stream.as_fd())
            .map_err(ClientError::Secret)?;
        if held != len {
            return Err(ClientError::DaemonGone);
        }
        Ok(secret)
    }
}

/// Connects to the socket at `path`, served by a process of this user (by
/// `SO_PEERCRED`): nothing is sent to another user's socket.
pub fn connect_to_own(path: &Path) -> Result<UnixStream, ClientError> {
    let stream = UnixStream::connect(path).map_err(|cause| ClientError::NoDaemon {
        path: path.to_owned(),
        cause,
    })?;
    let peer = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
    if peer.uid() != getuid().as_raw() {
        return Err(ClientError::ForeignDaemon {
            path: path.to_owned(),
            uid: peer.uid(),
        });
    }
    Ok(stream)
}

/// Turns a reply that is not the expected one into the error it stands for.
pub fn unexpected(reply: Reply) -> ClientError {
    match reply {
        Reply::Busy(text) => ClientError::Busy(text),
        Reply::Err(text) => ClientError::Refused(text),
        other => ClientError::Protocol(ProtocolError::UnknownCommand(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    /// A private directory holding one socket, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("dazai-client-{name}-{}", std::process::id()));
            std::fs::create_dir(&dir).unwrap();
            Self(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("dazai.sock")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Listens on `path`, accepts one connection, reads its request line,
    /// writes `answer` (if any), then holds the connection until the client
    /// closes it; returns the request line.
    fn listen(path: &Path, answer: Option<&'static str>) -> JoinHandle<String> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(&stream);
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            if let Some(answer) = answer {
                (&stream).write_all(answer.as_bytes()).unwrap();
            }
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            request
        })
    }

    #[test]
    fn a_request_nobody_answers_fails_at_its_deadline_naming_the_socket_and_the_fix() {
        let scratch = Scratch::new("silent");
        let socket = scratch.socket();
        let silent = listen(&socket, None);
        let deadline = Duration::from_millis(200);

        let error = Connection::open(&socket)
            .unwrap()
            .with_deadline(deadline)
            .request(&Request::Status)
            .expect_err("no reply, yet the request succeeded");

        let ClientError::NoReply {
            path,
            deadline: waited,
        } = &error
        else {
            panic!("{error:?}");
        };
        assert_eq!(
            (path.as_deref(), *waited),
            (Some(socket.as_path()), deadline)
        );
        let message = error.to_string();
        let expected = format!(
            "the daemon at {} did not answer within 200ms; fix: ",
            socket.display()
        );
        assert!(message.starts_with(&expected), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert_eq!(silent.join().unwrap(), "dazai/1 STATUS\n");
    }

    /// The heartbeat polls and a watch waits for the daemon's end, for as
    /// long as they live; a one-shot request keeps its deadline.
    #[test]
    fn held_connections_lose_the_deadline_once_answered_and_a_status_keeps_it() {
        let scratch = Scratch::new("held");
        let cases = [
            (
                Request::Heartbeat,
                "OK heartbeat attached ping-timeout=none\n",
                None,
            ),
            (
                Request::HeartbeatStandby,
                "OK standing by: heartbeat held by pid 7\n",
                None,
            ),
            (Request::Watch, "OK watching\n", None),
            (Request::Status, "STATUS {}\n", Some(REPLY_DEADLINE)),
        ];
        for (index, (request, answer, timeout)) in cases.into_iter().enumerate() {
            let socket = scratch.0.join(format!("{index}.sock"));
            let daemon = listen(&socket, Some(answer));
            let mut connection = Connection::open(&socket).unwrap();

            connection.request(&request).unwrap();

            let stream = connection.stream();
            assert_eq!(stream.read_timeout().unwrap(), timeout, "{request}");
            assert_eq!(stream.write_timeout().unwrap(), timeout, "{request}");
            drop(connection);
            assert_eq!(daemon.join().unwrap(), format!("{request}\n"));
        }
    }
}
