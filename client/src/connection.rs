//! One connection to the daemon: send a request line, read the reply.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use goodnight::{LockPolicy, SecretBuffer, SecretError};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::getuid;

use crate::protocol::{self, ProtocolError, Reply, Request, MAX_REPLY_LINE};

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
}

impl Connection {
    /// Connects to the daemon listening on `path`, once `SO_PEERCRED` shows
    /// it runs as this user: a request can say which process asks and a
    /// heartbeat ties the session to whoever listens, so neither goes to
    /// another user's socket.
    pub fn open(path: &Path) -> Result<Self, ClientError> {
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
        Ok(Self::from_stream(stream))
    }

    /// A connection over a stream that is already connected to the daemon.
    pub(crate) fn from_stream(stream: UnixStream) -> Self {
        Self { stream }
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

    /// Sends a request line and reads the reply line.
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
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
            Err(other) => Err(other),
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
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
        protocol::parse_reply(&line).map_err(ClientError::Protocol)
    }

    /// Reads the reply to a `GET` and the secret behind it, straight into a
    /// new locked buffer.
    pub(crate) fn receive_secret(mut self) -> Result<SecretBuffer, ClientError> {
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

/// Turns a reply that is not the expected one into the error it stands for.
pub fn unexpected(reply: Reply) -> ClientError {
    match reply {
        Reply::Busy(text) => ClientError::Busy(text),
        Reply::Err(text) => ClientError::Refused(text),
        other => ClientError::Protocol(ProtocolError::UnknownCommand(other.to_string())),
    }
}
