//! Lines on the daemon's connections: requests read without blocking and
//! split at newlines, none longer than [`MAX_LINE`]; replies written within a
//! time limit.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use dazai_client::protocol::{ProtocolError, Reply, MAX_LINE};

/// A reply that cannot be written in this time is abandoned.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes received on a connection, split into lines no longer than [`MAX_LINE`].
#[derive(Default)]
pub(super) struct LineBuffer {
    bytes: Vec<u8>,
}

impl LineBuffer {
    pub(super) fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// Whether nothing is buffered, not even part of a line.
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next complete line (without its newline), if one has arrived.
    pub(super) fn next_line(&mut self) -> Result<Option<Vec<u8>>, ProtocolError> {
        match self.bytes.iter().position(|&b| b == b'\n') {
            Some(end) if end < MAX_LINE => {
                let line = self.bytes[..end].to_vec();
                self.bytes.drain(..=end);
                Ok(Some(line))
            }
            Some(_) => Err(ProtocolError::LineTooLong),
            None if self.bytes.len() >= MAX_LINE => Err(ProtocolError::LineTooLong),
            None => Ok(None),
        }
    }
}

/// What one non-blocking read brought.
pub(super) enum Received {
    Data,
    Nothing,
    Closed,
}

/// Reads what is available on a non-blocking stream into `lines`.
pub(super) fn receive(stream: &UnixStream, lines: &mut LineBuffer) -> Received {
    let mut chunk = [0u8; MAX_LINE];
    match (&*stream).read(&mut chunk) {
        Ok(0) => Received::Closed,
        Ok(n) => {
            lines.push(&chunk[..n]);
            Received::Data
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Received::Nothing
        }
        Err(_) => Received::Closed,
    }
}

/// Writes a reply line and, for a secret, its bytes, within [`WRITE_TIMEOUT`].
pub(super) fn send(mut stream: &UnixStream, reply: &Reply, payload: &[u8]) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.write_all(format!("{reply}\n").as_bytes())?;
    stream.write_all(payload)?;
    stream.set_nonblocking(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_out_one_at_a_time_without_their_newline() {
        let mut lines = LineBuffer::default();
        lines.push(b"dazai/1 PING\ndazai/1 ST");
        assert_eq!(lines.next_line(), Ok(Some(b"dazai/1 PING".to_vec())));
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b"ATUS\n");
        assert_eq!(lines.next_line(), Ok(Some(b"dazai/1 STATUS".to_vec())));
        assert_eq!(lines.next_line(), Ok(None));
    }

    #[test]
    fn a_line_and_its_newline_fit_in_max_line_bytes() {
        let mut longest = vec![b'a'; MAX_LINE - 1];
        longest.push(b'\n');
        let mut lines = LineBuffer::default();
        lines.push(&longest);
        assert_eq!(lines.next_line(), Ok(Some(vec![b'a'; MAX_LINE - 1])));

        let mut one_more = vec![b'a'; MAX_LINE];
        one_more.push(b'\n');
        let mut lines = LineBuffer::default();
        lines.push(&one_more);
        assert_eq!(lines.next_line(), Err(ProtocolError::LineTooLong));
    }

    #[test]
    fn max_line_bytes_without_a_newline_are_too_long_without_waiting_for_more() {
        let mut lines = LineBuffer::default();
        lines.push(&[b'a'; MAX_LINE - 1]);
        assert_eq!(lines.next_line(), Ok(None));
        lines.push(b"a");
        assert_eq!(lines.next_line(), Err(ProtocolError::LineTooLong));
    }
}
