//! The server's stdout: rmcp writes each JSON-RPC message here as one line,
//! and a static tool's secret joins the line only on its way out.
//!
//! A static secret tool answers with a placeholder (see
//! [`Ledger::park`]); when the line holding it is written, the placeholder is
//! replaced by the secret, JSON-escaped through a small stack buffer that is
//! wiped after each write, straight from the locked buffer to standard output.
//! So the secret is never in rmcp's message, in serde's output or in any heap
//! buffer of this process: the only copies are the locked buffer (wiped when
//! the line is written) and the pipe to the agent.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use goodnight::wipe_bytes;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::AsyncWrite;

use crate::ledger::{Ledger, SLOT_DIGITS, SLOT_PREFIX};

/// Writes whole lines to stdout, splicing parked secrets into them.
pub struct SplicingStdout {
    ledger: Arc<Ledger>,
    pending: Vec<u8>,
}

impl SplicingStdout {
    /// A writer for this process's stdout.
    pub fn new(ledger: Arc<Ledger>) -> Self {
        Self {
            ledger,
            pending: Vec::new(),
        }
    }

    /// Writes one complete line, replacing each placeholder the ledger knows.
    fn emit(&self, line: &[u8]) -> io::Result<()> {
        let stdout = io::stdout();
        let fd = stdout.as_fd();
        let mut written = 0;
        let mut search = 0;
        while let Some(found) = find(&line[search..], SLOT_PREFIX.as_bytes()) {
            let start = search + found;
            let end = start + SLOT_PREFIX.len() + SLOT_DIGITS;
            search = start + SLOT_PREFIX.len();
            let Some(placeholder) = line
                .get(start..end)
                .and_then(|p| std::str::from_utf8(p).ok())
            else {
                continue;
            };
            let Some(secret) = self.ledger.claim(placeholder) else {
                continue;
            };
            write_all(fd, &line[written..start])?;
            write_json_escaped(fd, secret.expose())?;
            drop(secret);
            written = end;
            search = end;
        }
        write_all(fd, &line[written..])
    }
}

impl AsyncWrite for SplicingStdout {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.pending.extend_from_slice(buf);
        while let Some(newline) = this.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = this.pending.drain(..=newline).collect();
            this.emit(&line)?;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `bytes` whole, waiting out a full pipe.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::NONE);
            }
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

/// Writes `secret` as the inside of a JSON string, a chunk at a time through
/// a stack buffer that is wiped after every write.
fn write_json_escaped(fd: BorrowedFd<'_>, secret: &[u8]) -> io::Result<()> {
    let mut chunk = [0u8; 512];
    let mut len = 0;
    let mut result = Ok(());
    for &byte in secret {
        // The longest escape (\u00XX) is 6 bytes.
        if len + 6 > chunk.len() {
            result = write_all(fd, &chunk[..len]);
            wipe_bytes(&mut chunk[..len]);
            len = 0;
            if result.is_err() {
                break;
            }
        }
        len += escape_byte(byte, &mut chunk[len..]);
    }
    if result.is_ok() {
        result = write_all(fd, &chunk[..len]);
    }
    wipe_bytes(&mut chunk);
    result
}

/// JSON-escapes one byte of UTF-8 text into `out`; returns the bytes used.
fn escape_byte(byte: u8, out: &mut [u8]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'"' | b'\\' => {
            out[0] = b'\\';
            out[1] = byte;
            2
        }
        b'\n' | b'\r' | b'\t' => {
            out[0] = b'\\';
            out[1] = match byte {
                b'\n' => b'n',
                b'\r' => b'r',
                _ => b't',
            };
            2
        }
        0x00..=0x1f | 0x7f => {
            out[..4].copy_from_slice(b"\\u00");
            out[4] = HEX[usize::from(byte >> 4)];
            out[5] = HEX[usize::from(byte & 0xf)];
            6
        }
        _ => {
            out[0] = byte;
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        let mut buffer = [0u8; 6];
        for &byte in text.as_bytes() {
            let n = escape_byte(byte, &mut buffer);
            out.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn escaping_matches_what_serde_json_would_write() {
        for text in [
            "plain",
            "quote\" back\\slash",
            "nl\ncr\rtab\t",
            "ctl\u{1}\u{7f}",
            "ünï",
        ] {
            let serde = serde_json::to_string(text).unwrap();
            let parsed: String = serde_json::from_str(&format!("\"{}\"", escaped(text))).unwrap();
            assert_eq!(parsed, text, "{serde}");
        }
    }
}
