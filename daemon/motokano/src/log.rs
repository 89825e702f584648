//! Log lines on stderr (stdout carries the protocol): what happened and when,
//! never a secret's value and never an agent's argument values.

use std::fmt;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `dazai mcp [T]: message` on stderr, T being seconds since the epoch.
pub fn line(message: fmt::Arguments<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "dazai mcp [{}.{:03}]: {message}",
        now.as_secs(),
        now.subsec_millis()
    );
}
