//! The capability: the one thing that lets a process obtain a secret.
//!
//! Connecting to the daemon's socket grants no secret: any process of the
//! user's uid can connect. The daemon instead hands its supervised program a
//! descriptor, one end of a `SOCK_SEQPACKET` socket pair whose other end only
//! the daemon holds, and the program's descendants inherit it. A `GET` travels
//! as one message on that descriptor, carrying (`SCM_RIGHTS`) the socket on
//! which the daemon writes its reply, so every process of the tree gets its
//! own reply however many ask at once.
//!
//! The descriptor cannot be forged, and a process outside the tree can take it
//! only with ptrace-level access to a holder: `pidfd_getfd(2)` needs
//! `PTRACE_MODE_ATTACH`, and opening `/proc/PID/fd/N` of a socket fails with
//! `ENXIO`. Only its number travels in the environment, which grants nothing.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;

use goodnight::SecretBuffer;
use nix::sys::socket::{
    getsockopt, sendmsg, socketpair, sockopt, AddressFamily, ControlMessage, MsgFlags, SockFlag,
    SockType,
};

use crate::connection::{ClientError, Connection};
use crate::protocol::Request;

/// The environment variable that names the capability's descriptor number.
pub const CAPABILITY_ENV: &str = "DAZAI_CAPABILITY_FD";

/// The inherited capability descriptor of this process.
#[derive(Clone, Copy, Debug)]
pub struct Capability {
    fd: RawFd,
}

impl AsFd for Capability {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `inherited` checked that the descriptor is open, and nothing
        // in this process closes the capability it was handed.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl Capability {
    /// The capability this process inherited, checked to be a descriptor of
    /// the right kind (an error says why there is none).
    pub fn inherited() -> Result<Self, ClientError> {
        let number = std::env::var(CAPABILITY_ENV).map_err(|_| ClientError::NoCapability {
            why: format!("{CAPABILITY_ENV} is not set"),
        })?;
        let fd: RawFd =
            number
                .parse()
                .ok()
                .filter(|fd| *fd >= 0)
                .ok_or_else(|| ClientError::NoCapability {
                    why: format!("{CAPABILITY_ENV}={number:?} is not a descriptor number"),
                })?;
        // SAFETY: the descriptor is only borrowed for one getsockopt call,
        // which fails cleanly (EBADF, ENOTSOCK) if the number is not an open socket.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        match getsockopt(&borrowed, sockopt::SockType) {
            Ok(SockType::SeqPacket) => Ok(Self { fd }),
            Ok(_) => Err(ClientError::NoCapability {
                why: format!("descriptor {fd} is a socket of another kind"),
            }),
            Err(errno) => Err(ClientError::NoCapability {
                why: format!(
                    "descriptor {fd} is not an open socket ({errno}): a program between the supervised one and this one closed it, as Python's subprocess does unless pass_fds lists it"
                ),
            }),
        }
    }

    /// Fetches the secret `name` straight into a new locked buffer.
    pub fn fetch_secret(&self, name: &str) -> Result<SecretBuffer, ClientError> {
        let request = Request::Get {
            name: name.to_owned(),
        };
        self.open(&request)?.receive_secret()
    }

    /// Sends `request` through the capability with a fresh reply socket, and
    /// returns the connection the reply arrives on.
    fn open(&self, request: &Request) -> Result<Connection, ClientError> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let line = format!("{request}\n");
        let reply_socket = [theirs.as_raw_fd()];
        sendmsg::<()>(
            self.fd,
            &[IoSlice::new(line.as_bytes())],
            &[ControlMessage::ScmRights(&reply_socket)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|errno| match errno {
            // The daemon's end is gone: it ended (panic, shutdown).
            nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNREFUSED => ClientError::DaemonGone,
            other => ClientError::Io(other.into()),
        })?;
        // Only the daemon may hold the other end now: an answer then comes
        // from it alone, and its end closing reads as end of file.
        drop(theirs);
        Ok(Connection::from_stream(UnixStream::from(ours)))
    }
}
