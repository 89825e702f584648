//! `dazai mcp`, as an agent launches it: a relay between the agent's stdio
//! and the executor's socket. It holds no capability and names no tools: it
//! passes MCP messages along, and nothing else.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dazai_client::connection::connect_to_own;
use dazai_client::ClientError;

use crate::sessions::executor_socket;
use crate::EXIT_DAEMON_GONE;

/// Relays until the session ends; returns the exit status: 0 when the agent
/// closed stdin first, [`EXIT_DAEMON_GONE`] when the session ended under it.
pub fn relay(socket: &Path) -> Result<i32, ClientError> {
    let stream = connect_when_listening(&executor_socket(socket))?;
    let agent_done = Arc::new(AtomicBool::new(false));
    {
        let mut to_session = stream.try_clone()?;
        let agent_done = agent_done.clone();
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut to_session);
            agent_done.store(true, Ordering::SeqCst);
            let _ = to_session.shutdown(Shutdown::Write);
        });
    }
    copy_flushing(&stream, &mut io::stdout().lock());
    Ok(if agent_done.load(Ordering::SeqCst) {
        0
    } else {
        EXIT_DAEMON_GONE
    })
}

/// An agent may launch `dazai mcp` while the daemon is still starting its
/// executor: a socket that does not exist yet, or refuses, is tried again
/// for a few seconds before the error stands.
fn connect_when_listening(path: &Path) -> Result<UnixStream, ClientError> {
    let started = Instant::now();
    loop {
        match connect_to_own(path) {
            Err(ClientError::NoDaemon { cause, .. })
                if matches!(
                    cause.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && started.elapsed() < EXECUTOR_START =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            outcome => return outcome,
        }
    }
}

/// How long the relay waits for the executor to listen.
const EXECUTOR_START: Duration = Duration::from_secs(5);

/// Copies until end of file, flushing after every read: each MCP message
/// must reach the agent as soon as it is written.
fn copy_flushing(mut from: &UnixStream, to: &mut impl Write) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => return,
            Ok(n) => {
                if to
                    .write_all(&buffer[..n])
                    .and_then(|()| to.flush())
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
