//! The daemon's end of the capability: the only way to obtain a secret.
//!
//! The daemon makes a `SOCK_SEQPACKET` socket pair at start-up, keeps one end
//! and hands the other to its supervised program, which its descendants
//! inherit (`dazai_client::capability` describes the client side and why the
//! descriptor cannot be forged or taken without ptrace-level access). Each
//! message on the daemon's end is one request line carrying the socket for
//! its reply. Nothing on the listening socket can stand in for it: connecting
//! there grants no secret.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use dazai_client::protocol::MAX_LINE;
use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};

/// The daemon's end: polled by the event loop.
pub struct Door {
    end: OwnedFd,
}

/// The end handed to the supervised program (close-on-exec in the daemon;
/// only the program's own `exec` clears that flag).
pub struct TreeEnd {
    end: OwnedFd,
}

/// One request that arrived through the capability.
pub struct CapableRequest {
    /// The request line, without its newline.
    pub line: Vec<u8>,
    /// The socket the reply goes to.
    pub reply: UnixStream,
}

/// What one non-blocking receive brought.
pub enum Arrival {
    /// A request with its reply socket.
    Request(CapableRequest),
    /// A message without a reply socket, or longer than a request line: no
    /// one to answer, so it is dropped.
    Unanswerable,
    /// Nothing waiting (or the receive failed: the event loop's poll tells
    /// when every holder of the tree's end has closed it).
    Nothing,
}

/// Makes the pair at start-up.
pub fn open_pair() -> Result<(Door, TreeEnd), Errno> {
    let (daemon_end, tree_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // The tree's end blocks: `dazai get` waits for its send like any socket user.
    nix::fcntl::fcntl(
        &tree_end,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    Ok((Door { end: daemon_end }, TreeEnd { end: tree_end }))
}

impl TreeEnd {
    /// The descriptor number the program finds in `DAZAI_CAPABILITY_FD`.
    pub fn raw(&self) -> RawFd {
        self.end.as_raw_fd()
    }
}

impl AsFd for Door {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.end.as_fd()
    }
}

impl Door {
    /// Receives one message without blocking.
    pub fn receive(&self) -> Arrival {
        let mut line = vec![0u8; MAX_LINE];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut line)];
        let message = match recvmsg::<()>(
            self.end.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => message,
            Err(_) => return Arrival::Nothing,
        };
        let truncated = message
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        let length = message.bytes;
        // Take ownership of every descriptor that arrived, so none leaks
        // whatever the message holds.
        let mut received: Vec<OwnedFd> = Vec::new();
        if let Ok(cmsgs) = message.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    received.extend(fds.into_iter().map(|fd| {
                        // SAFETY: the kernel has just installed this descriptor
                        // in this process for this message; nothing else owns it.
                        unsafe { OwnedFd::from_raw_fd(fd) }
                    }));
                }
            }
        }
        let reply = match (truncated, received.len()) {
            (false, 1) => UnixStream::from(received.remove(0)),
            _ => return Arrival::Unanswerable,
        };
        line.truncate(length);
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        Arrival::Request(CapableRequest { line, reply })
    }
}
