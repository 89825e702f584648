//! The dazai wire protocol, version 1: one request line per connection, one
//! reply line back (see `docs/protocol.md` for transcripts).
//!
//! Every request starts with the version token, so a daemon can refuse a client
//! of another version with a clear `ERR` instead of misreading it:
//!
//! ```text
//! dazai/1 HEARTBEAT          -> OK heartbeat attached ping-timeout=3 | BUSY ...
//!   PING                     -> PONG            (repeated, heartbeat connection only)
//! dazai/1 HEARTBEAT STANDBY  -> OK heartbeat attached ... | OK standing by: ...;
//!                               later OK heartbeat attached ... when it takes over
//! dazai/1 STATUS             -> STATUS {json}
//! dazai/1 REGISTER [PID]     -> OK registered pid PID
//! dazai/1 REGISTER PID GROUP -> OK registered pid PID and its process group
//! dazai/1 GET NAME           -> SECRET LEN\n<LEN raw bytes>
//! dazai/1 WATCH              -> OK watching ...; then nothing: the daemon's end closes it
//! dazai/1 PANIC [HARD]       -> OK panic requested
//! anything malformed         -> ERR <cause>; the connection is closed
//! ```

use std::fmt;

/// The token that opens every request line.
pub const VERSION_TOKEN: &str = "dazai/1";

/// Longest line either side may send, newline included. Longer input is an error.
pub const MAX_LINE: usize = 256;

/// Longest reply line (a `STATUS` JSON); longer is an error.
pub const MAX_REPLY_LINE: usize = 64 * 1024;

/// Longest secret name.
pub const MAX_NAME: usize = 64;

/// A request a client opens a connection with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Attach the liveness heartbeat; the connection then carries `PING`s.
    Heartbeat,
    /// Attach the heartbeat, or, while another session holds it, stand by
    /// to take it over when that session is lost (a second login).
    HeartbeatStandby,
    /// Ask for the daemon's state as one JSON line.
    Status,
    /// Register a process (the caller itself when `pid` is `None`) so the panic kills it.
    Register {
        /// The process to register; `None` registers the connecting process.
        pid: Option<i32>,
    },
    /// Register a process-group leader: the panic kills the process and, as
    /// long as it has not been reaped, every member of its process group.
    RegisterGroup {
        /// The process to register; it must lead its own process group.
        leader: i32,
    },
    /// Hold the connection open, silent, until the daemon ends: a peer learns
    /// of the daemon's end (panic, shutdown, crash) as end of file.
    Watch,
    /// Fetch a secret by name (only for processes the panic would kill).
    Get {
        /// The secret's name.
        name: String,
    },
    /// Shut down cleanly, as SIGTERM does: wipe, remove socket and pidfile,
    /// kill nothing (`dazai stop`, like `ssh-agent -k`).
    Stop,
    /// Run the panic sequence.
    Panic {
        /// `true` bypasses the grace window.
        hard: bool,
    },
}

/// How an `OK` reply to `HEARTBEAT STANDBY` starts when the connection
/// stands by; a second `OK` follows when it takes the heartbeat over.
pub const STANDING_BY: &str = "standing by";

/// The heartbeat connection's only message after attaching.
pub const PING: &str = "PING";
/// The daemon's answer to [`PING`].
pub const PONG: &str = "PONG";

/// Why a line is not a valid request. The `Display` text is what the daemon
/// sends back after `ERR `; it never echoes the offending bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// The line exceeded [`MAX_LINE`] bytes.
    LineTooLong,
    /// The line held a byte outside printable ASCII.
    NotPrintableAscii,
    /// The line did not start with a `dazai/N` token.
    MissingVersion,
    /// The client speaks another protocol version.
    UnsupportedVersion(String),
    /// The verb is not one this version knows.
    UnknownCommand(String),
    /// The verb is known but its arguments are wrong.
    BadArguments(&'static str),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineTooLong => write!(f, "line longer than {MAX_LINE} bytes"),
            Self::NotPrintableAscii => write!(f, "line holds bytes outside printable ASCII"),
            Self::MissingVersion => {
                write!(
                    f,
                    "request does not start with the version token {VERSION_TOKEN}"
                )
            }
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "unsupported protocol version {v}; this daemon speaks {VERSION_TOKEN}"
                )
            }
            Self::UnknownCommand(c) => write!(f, "unknown command {c}"),
            Self::BadArguments(usage) => write!(f, "bad arguments; usage: {usage}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl fmt::Display for Request {
    /// The request line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{VERSION_TOKEN} ")?;
        match self {
            Self::Heartbeat => write!(f, "HEARTBEAT"),
            Self::HeartbeatStandby => write!(f, "HEARTBEAT STANDBY"),
            Self::Status => write!(f, "STATUS"),
            Self::Register { pid: None } => write!(f, "REGISTER"),
            Self::Register { pid: Some(pid) } => write!(f, "REGISTER {pid}"),
            Self::RegisterGroup { leader } => write!(f, "REGISTER {leader} GROUP"),
            Self::Watch => write!(f, "WATCH"),
            Self::Get { name } => write!(f, "GET {name}"),
            Self::Stop => write!(f, "STOP"),
            Self::Panic { hard: false } => write!(f, "PANIC"),
            Self::Panic { hard: true } => write!(f, "PANIC HARD"),
        }
    }
}

/// Checks that a line (without its newline) is short, printable ASCII text.
pub fn check_line(line: &[u8]) -> Result<&str, ProtocolError> {
    if line.len() >= MAX_LINE {
        return Err(ProtocolError::LineTooLong);
    }
    if !line.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ProtocolError::NotPrintableAscii);
    }
    std::str::from_utf8(line).map_err(|_| ProtocolError::NotPrintableAscii)
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    let text = check_line(line)?;
    let mut words = text.split(' ');
    let version = words.next().unwrap_or_default();
    if version != VERSION_TOKEN {
        return Err(if version.starts_with("dazai/") {
            ProtocolError::UnsupportedVersion(truncated(version))
        } else {
            ProtocolError::MissingVersion
        });
    }
    let verb = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    match (verb, args.as_slice()) {
        ("HEARTBEAT", []) => Ok(Request::Heartbeat),
        ("HEARTBEAT", ["STANDBY"]) => Ok(Request::HeartbeatStandby),
        ("HEARTBEAT", _) => Err(ProtocolError::BadArguments("HEARTBEAT [STANDBY]")),
        ("STATUS", []) => Ok(Request::Status),
        ("STATUS", _) => Err(ProtocolError::BadArguments("STATUS")),
        ("REGISTER", []) => Ok(Request::Register { pid: None }),
        ("REGISTER", [pid]) => match pid.parse::<i32>() {
            Ok(pid) if pid > 0 => Ok(Request::Register { pid: Some(pid) }),
            _ => Err(ProtocolError::BadArguments("REGISTER [PID [GROUP]]")),
        },
        ("REGISTER", [pid, "GROUP"]) => match pid.parse::<i32>() {
            Ok(leader) if leader > 0 => Ok(Request::RegisterGroup { leader }),
            _ => Err(ProtocolError::BadArguments("REGISTER [PID [GROUP]]")),
        },
        ("REGISTER", _) => Err(ProtocolError::BadArguments("REGISTER [PID [GROUP]]")),
        ("WATCH", []) => Ok(Request::Watch),
        ("WATCH", _) => Err(ProtocolError::BadArguments("WATCH")),
        ("GET", [name]) if is_valid_name(name) => Ok(Request::Get {
            name: (*name).to_owned(),
        }),
        ("GET", _) => Err(ProtocolError::BadArguments(
            "GET NAME (1-64 of A-Z a-z 0-9 _ . -)",
        )),
        ("STOP", []) => Ok(Request::Stop),
        ("STOP", _) => Err(ProtocolError::BadArguments("STOP")),
        ("PANIC", []) => Ok(Request::Panic { hard: false }),
        ("PANIC", ["HARD"]) => Ok(Request::Panic { hard: true }),
        ("PANIC", _) => Err(ProtocolError::BadArguments("PANIC [HARD]")),
        (other, _) => Err(ProtocolError::UnknownCommand(truncated(other))),
    }
}

/// Whether `name` is a valid secret name: 1 to [`MAX_NAME`] of `A-Z a-z 0-9 _ . -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Keeps an echoed word short so an error reply always fits in one line.
fn truncated(word: &str) -> String {
    word.chars().take(32).collect()
}

/// A reply line from the daemon (except the secret bytes that follow `SECRET`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The request was done; the text says what.
    Ok(String),
    /// A heartbeat is already attached.
    Busy(String),
    /// The request was refused or malformed; the text says why.
    Err(String),
    /// The daemon's state as JSON.
    Status(String),
    /// A secret of this many bytes follows the line.
    Secret(usize),
    /// The answer to a `PING`.
    Pong,
}

impl fmt::Display for Reply {
    /// The reply line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok(text) => write!(f, "OK {text}"),
            Self::Busy(text) => write!(f, "BUSY {text}"),
            Self::Err(text) => write!(f, "ERR {text}"),
            Self::Status(json) => write!(f, "STATUS {json}"),
            Self::Secret(len) => write!(f, "SECRET {len}"),
            Self::Pong => write!(f, "{PONG}"),
        }
    }
}

/// Parses one reply line (without its newline).
pub fn parse_reply(line: &[u8]) -> Result<Reply, ProtocolError> {
    let text = std::str::from_utf8(line).map_err(|_| ProtocolError::NotPrintableAscii)?;
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    let rest = rest.to_owned();
    match word {
        "OK" => Ok(Reply::Ok(rest)),
        "BUSY" => Ok(Reply::Busy(rest)),
        "ERR" => Ok(Reply::Err(rest)),
        "STATUS" => Ok(Reply::Status(rest)),
        "SECRET" => rest
            .parse()
            .map(Reply::Secret)
            .map_err(|_| ProtocolError::BadArguments("SECRET LEN")),
        PONG if rest.is_empty() => Ok(Reply::Pong),
        other => Err(ProtocolError::UnknownCommand(truncated(other))),
    }
}

/// Reads the `ping-timeout=N` token of a heartbeat `OK` reply, in seconds.
pub fn ping_timeout_of(ok_text: &str) -> Option<u64> {
    ok_text
        .split(' ')
        .find_map(|word| word.strip_prefix("ping-timeout="))
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_round_trips_through_its_line() {
        let requests = [
            Request::Heartbeat,
            Request::HeartbeatStandby,
            Request::Status,
            Request::Register { pid: None },
            Request::Register { pid: Some(42) },
            Request::RegisterGroup { leader: 42 },
            Request::Watch,
            Request::Get {
                name: "api.key-1".into(),
            },
            Request::Stop,
            Request::Panic { hard: false },
            Request::Panic { hard: true },
        ];
        for request in requests {
            let line = request.to_string();
            assert_eq!(parse_request(line.as_bytes()), Ok(request), "{line}");
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_their_cause() {
        let long = vec![b'A'; MAX_LINE];
        let cases: [(&[u8], ProtocolError); 7] = [
            (&long, ProtocolError::LineTooLong),
            (b"dazai/1 GET a\0b", ProtocolError::NotPrintableAscii),
            (b"\xff\xfe", ProtocolError::NotPrintableAscii),
            (b"HEARTBEAT", ProtocolError::MissingVersion),
            (
                b"dazai/2 HEARTBEAT",
                ProtocolError::UnsupportedVersion("dazai/2".into()),
            ),
            (
                b"dazai/1 FROB",
                ProtocolError::UnknownCommand("FROB".into()),
            ),
            (
                b"dazai/1 GET ../etc",
                ProtocolError::BadArguments("GET NAME (1-64 of A-Z a-z 0-9 _ . -)"),
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_request(line), Err(expected));
        }
    }

    #[test]
    fn register_refuses_pids_that_are_not_positive_numbers() {
        for line in [
            "dazai/1 REGISTER 0",
            "dazai/1 REGISTER -1",
            "dazai/1 REGISTER x",
            "dazai/1 REGISTER 0 GROUP",
            "dazai/1 REGISTER GROUP",
            "dazai/1 REGISTER 12 GROUP x",
            "dazai/1 REGISTER 12 TEAM",
            "dazai/1 WATCH 12",
        ] {
            assert!(parse_request(line.as_bytes()).is_err(), "{line}");
        }
    }

    #[test]
    fn replies_round_trip_and_carry_the_ping_timeout() {
        let ok = Reply::Ok("heartbeat attached ping-timeout=3".into());
        let parsed = parse_reply(ok.to_string().as_bytes()).unwrap();
        assert_eq!(parsed, ok);
        assert_eq!(
            ping_timeout_of("heartbeat attached ping-timeout=3"),
            Some(3)
        );
        assert_eq!(
            ping_timeout_of("heartbeat attached ping-timeout=none"),
            None
        );
        assert_eq!(parse_reply(b"SECRET 12"), Ok(Reply::Secret(12)));
        assert_eq!(parse_reply(b"PONG"), Ok(Reply::Pong));
    }

    #[test]
    fn an_error_reply_never_echoes_more_than_a_short_word() {
        let line = format!("dazai/1 {}", "X".repeat(200));
        let message = parse_request(line.as_bytes()).unwrap_err().to_string();
        assert!(message.len() < 64, "{message}");
        // Found by the `wire` fuzz target: a long version word was echoed whole.
        let line = format!("dazai/{} STATUS", "9".repeat(200));
        let message = parse_request(line.as_bytes()).unwrap_err().to_string();
        assert!(message.len() < 100, "{message}");
    }
}
