//! The daemon's socket and pidfile, made so that nobody else can use or replace them.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};
use nix::unistd::Uid;

use crate::failure::{Exit, Failure};

/// The bound socket and the written pidfile; removed on a clean shutdown.
pub struct Endpoint {
    /// The listening socket (non-blocking).
    pub listener: UnixListener,
    /// Where the socket is.
    pub socket_path: PathBuf,
    /// Where the pidfile is.
    pub pidfile_path: PathBuf,
    /// What start-up had to clean away (stale socket or pidfile), for the log.
    pub replaced: Vec<String>,
}

impl Endpoint {
    /// Binds `socket` (mode 0600) and writes `pidfile` (mode 0600, created exclusively).
    pub fn bind(socket: &Path, pidfile: &Path) -> Result<Self, Failure> {
        let mut replaced = Vec::new();
        for path in [socket, pidfile] {
            ensure_private_directory(parent_of(path))?;
        }
        if remove_stale_socket(socket)? {
            replaced.push(format!("stale socket {}", socket.display()));
        }
        let listener = bind_private(socket)?;
        // A refused start leaves nothing behind, not even the socket it bound.
        let pidfile_replaced = write_pidfile(pidfile).inspect_err(|_| {
            let _ = fs::remove_file(socket);
        })?;
        if pidfile_replaced {
            replaced.push(format!("stale pidfile {}", pidfile.display()));
        }
        Ok(Self {
            listener,
            socket_path: socket.to_owned(),
            pidfile_path: pidfile.to_owned(),
            replaced,
        })
    }

    /// Removes the socket and the pidfile (clean shutdown).
    pub fn remove(&self) {
        let _ = fs::remove_file(&self.socket_path);
        let _ = fs::remove_file(&self.pidfile_path);
    }
}

/// The pidfile used when none is given: `dazai.pid` beside the socket.
pub fn default_pidfile(socket: &Path) -> PathBuf {
    parent_of(socket).join("dazai.pid")
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn endpoint_error(message: String) -> Failure {
    Failure::new(Exit::Endpoint, message)
}

/// An I/O error while `doing` something to a path of the endpoint; `option`
/// is the one that picks another path (`--socket`, `--pidfile`).
fn endpoint_io_error(doing: String, error: std::io::Error, option: &str) -> Failure {
    endpoint_error(format!(
        "{doing} ({error}); fix: check the path's owner, permissions and file system, or choose another {option}"
    ))
}

/// The directory must be ours, a real directory, and writable by nobody else;
/// it is created (0700) when missing.
fn ensure_private_directory(dir: &Path) -> Result<(), Failure> {
    if fs::symlink_metadata(dir).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                endpoint_error(format!(
                    "cannot create socket directory {} ({e}); fix: create it with mode 0700, or pass --socket / set DAZAI_SOCKET to a path in a directory only you can write (XDG_RUNTIME_DIR is {})",
                    dir.display(),
                    if std::env::var_os("XDG_RUNTIME_DIR").is_some() { "set" } else { "not set: no login session made one" }
                ))
            })?;
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| {
        endpoint_io_error(format!("cannot inspect {}", dir.display()), e, "--socket")
    })?;
    let fix = "fix: use a directory only you can write, e.g. `mkdir -m 700 DIR`, or --socket in $XDG_RUNTIME_DIR";
    if meta.file_type().is_symlink() || !meta.is_dir() {
        return Err(endpoint_error(format!(
            "socket directory {} is a symlink or not a directory; {fix}",
            dir.display()
        )));
    }
    if meta.uid() != Uid::current().as_raw() {
        return Err(endpoint_error(format!(
            "socket directory {} is owned by uid {}, not by you (uid {}); {fix}",
            dir.display(),
            meta.uid(),
            Uid::current()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(endpoint_error(format!(
            "socket directory {} is writable by others (mode {:o}); {fix}",
            dir.display(),
            meta.mode() & 0o777
        )));
    }
    ensure_safe_ancestors(dir, fix)
}

/// Whoever may rename an ancestor of the socket's directory may put a
/// directory of their own in its place: every ancestor must belong to root
/// or to us, and be writable by nobody else unless it is sticky (`/tmp`),
/// where others cannot rename what is ours.
fn ensure_safe_ancestors(dir: &Path, fix: &str) -> Result<(), Failure> {
    let real = fs::canonicalize(dir).map_err(|e| {
        endpoint_io_error(format!("cannot resolve {}", dir.display()), e, "--socket")
    })?;
    for ancestor in real.ancestors().skip(1) {
        let meta = fs::metadata(ancestor).map_err(|e| {
            endpoint_io_error(
                format!("cannot inspect {}", ancestor.display()),
                e,
                "--socket",
            )
        })?;
        let owner_is_trusted = meta.uid() == 0 || meta.uid() == Uid::current().as_raw();
        let others_may_write = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
        if !owner_is_trusted || others_may_write {
            return Err(endpoint_error(format!(
                "{} above the socket directory is {} (uid {}, mode {:o}); {fix}",
                ancestor.display(),
                if owner_is_trusted {
                    "writable by others and not sticky"
                } else {
                    "owned by another user"
                },
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Removes a socket file nobody answers on; refuses anything else in the way.
/// Returns whether a stale socket was removed.
fn remove_stale_socket(socket: &Path) -> Result<bool, Failure> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(endpoint_io_error(
                format!("cannot inspect {}", socket.display()),
                e,
                "--socket",
            ))
        }
    };
    let path = socket.display();
    if meta.file_type().is_symlink() {
        return Err(endpoint_error(format!(
            "{path} is a symlink; refusing to follow it; fix: remove it or choose another --socket"
        )));
    }
    if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
        return Err(endpoint_error(format!(
            "{path} exists and is not a socket; fix: remove it or choose another --socket"
        )));
    }
    if meta.uid() != Uid::current().as_raw() {
        return Err(endpoint_error(format!(
            "{path} is owned by uid {}, not by you; fix: choose another --socket",
            meta.uid()
        )));
    }
    match UnixStream::connect(socket) {
        Ok(_) => Err(endpoint_error(format!(
            "a daemon already answers on {path}; fix: `dazai status --socket {path}`, or choose another --socket"
        ))),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            fs::remove_file(socket)
                .map_err(|e| endpoint_io_error(format!("cannot remove stale socket {path}"), e, "--socket"))?;
            Ok(true)
        }
        Err(e) => Err(endpoint_error(format!(
            "cannot tell whether a daemon answers on {path} ({e}); fix: remove it if no daemon runs"
        ))),
    }
}

/// Binds with a umask that makes the socket 0600 from its first instant.
fn bind_private(socket: &Path) -> Result<UnixListener, Failure> {
    let previous = umask(Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(socket);
    umask(previous);
    let listener = bound.map_err(|e| {
        endpoint_error(format!(
            "cannot bind {} ({e}); fix: check the directory or choose another --socket",
            socket.display()
        ))
    })?;
    fs::set_permissions(socket, Permissions::from_mode(0o600))
        .and_then(|()| listener.set_nonblocking(true))
        .map_err(|e| {
            endpoint_io_error(format!("cannot secure {}", socket.display()), e, "--socket")
        })?;
    Ok(listener)
}

/// Creates the pidfile exclusively (0600, never through a symlink). An existing
/// one is replaced only when the process it names is gone. Returns whether a
/// stale pidfile was replaced.
fn write_pidfile(pidfile: &Path) -> Result<bool, Failure> {
    let mut replaced = false;
    let mut file = loop {
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(pidfile);
        match created {
            Ok(file) => break file,
            Err(e) if e.kind() == ErrorKind::AlreadyExists && !replaced => {
                remove_stale_pidfile(pidfile)?;
                replaced = true;
            }
            Err(e) => {
                return Err(endpoint_error(format!(
                    "cannot create pidfile {} ({e}); fix: choose another --pidfile",
                    pidfile.display()
                )))
            }
        }
    };
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(|e| {
            endpoint_io_error(
                format!("cannot write pidfile {}", pidfile.display()),
                e,
                "--pidfile",
            )
        })?;
    Ok(replaced)
}

fn remove_stale_pidfile(pidfile: &Path) -> Result<(), Failure> {
    let path = pidfile.display();
    let meta = fs::symlink_metadata(pidfile)
        .map_err(|e| endpoint_io_error(format!("cannot inspect pidfile {path}"), e, "--pidfile"))?;
    if meta.file_type().is_symlink() || !meta.is_file() {
        return Err(endpoint_error(format!(
            "pidfile {path} is a symlink or not a regular file; refusing it; fix: remove it or choose another --pidfile"
        )));
    }
    let mut text = String::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(pidfile)
        .and_then(|file| file.take(32).read_to_string(&mut text))
        .map_err(|e| endpoint_io_error(format!("cannot read pidfile {path}"), e, "--pidfile"))?;
    if let Ok(pid) = text.trim().parse::<i32>() {
        if pid > 0 && Path::new(&format!("/proc/{pid}")).exists() {
            return Err(endpoint_error(format!(
                "pidfile {path} names pid {pid}, which is running; fix: stop that daemon or choose another --pidfile"
            )));
        }
    }
    fs::remove_file(pidfile).map_err(|e| {
        endpoint_io_error(
            format!("cannot remove stale pidfile {path}"),
            e,
            "--pidfile",
        )
    })
}
