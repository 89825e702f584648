//! `peer_pidfd`: the kernel's own pidfd of a socket's peer.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;

use goodnight::pidfd::peer_pidfd;

#[test]
fn the_peer_pidfd_names_the_connecting_process() {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    match peer_pidfd(ours.as_fd()) {
        Ok(pidfd) => {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
                .unwrap();
            let pid = info
                .lines()
                .find_map(|line| line.strip_prefix("Pid:"))
                .map(str::trim);
            assert_eq!(pid, Some(std::process::id().to_string().as_str()), "{info}");
        }
        // Before Linux 6.5 the option does not exist; the daemon falls back.
        Err(errno) => assert_eq!(errno, nix::errno::Errno::ENOPROTOOPT),
    }
}
