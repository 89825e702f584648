//! Where the daemon's socket lives unless the user says otherwise.

use std::path::PathBuf;

/// Environment variable that overrides the default socket path.
pub const SOCKET_ENV: &str = "DAZAI_SOCKET";

/// `$DAZAI_SOCKET`, else `$XDG_RUNTIME_DIR/dazai/dazai.sock`, else
/// `/run/user/UID/dazai/dazai.sock` (the directory systemd makes per user).
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("/run/user/{}", nix::unistd::getuid())));
    runtime_dir.join("dazai").join("dazai.sock")
}
