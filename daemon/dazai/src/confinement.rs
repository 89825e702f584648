//! Seccomp confinement of the sealed daemon (cargo feature `seccomp`, Linux).

use std::fmt;

/// Whether the daemon runs under its seccomp allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// Built without the `seccomp` feature.
    Off,
}

impl fmt::Display for Confinement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => write!(f, "off"),
        }
    }
}

/// Installs the allowlist on every thread (no-op without the feature).
pub fn seal() -> Result<Confinement, String> {
    Ok(Confinement::Off)
}

/// The allowlist this build would install, one line per rule.
pub fn describe() -> String {
    "seccomp: not built in (build with --features seccomp)\n".to_owned()
}
