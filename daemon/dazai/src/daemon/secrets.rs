//! Secrets: where each comes from (`NAME=SOURCE`) and the vault that holds them.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::str::FromStr;

use goodnight::{Backend, LineKeys, LockPolicy, MemoryBackend, SecretBuffer, SecretError, Typed};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices};

use crate::failure::{Exit, Failure};

/// Largest secret read from a stream (fd, prompt); files may be as large as
/// this too. Each secret costs its size in locked memory.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Where a secret's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// An inherited file descriptor, read to EOF and closed.
    Fd(RawFd),
    /// An environment variable, removed and scrubbed from the environment after reading.
    Env(String),
    /// A file, read to EOF.
    File(PathBuf),
    /// A systemd credential (`LoadCredential=`, `LoadCredentialEncrypted=`):
    /// the file NAME in `$CREDENTIALS_DIRECTORY`.
    Credential(String),
    /// A no-echo prompt on the controlling terminal.
    Prompt,
}

/// `NAME=SOURCE` from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSpec {
    /// The name clients ask for.
    pub name: String,
    /// Where the bytes come from.
    pub source: SecretSource,
}

impl FromStr for SecretSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, source) = text
            .split_once('=')
            .ok_or("expected NAME=SOURCE, e.g. api=env:API_KEY")?;
        if !dazai_client::protocol::is_valid_name(name) {
            return Err(format!(
                "secret name {name:?} must be 1-64 of A-Z a-z 0-9 _ . -"
            ));
        }
        let source = match source.split_once(':') {
            Some(("fd", n)) => SecretSource::Fd(
                n.parse()
                    .ok()
                    .filter(|fd: &RawFd| *fd >= 0)
                    .ok_or("fd:N needs a file descriptor number")?,
            ),
            Some(("env", var)) if !var.is_empty() => SecretSource::Env(var.to_owned()),
            Some(("file", path)) if !path.is_empty() => SecretSource::File(path.into()),
            Some(("credential", name)) if dazai_client::protocol::is_valid_name(name) => {
                SecretSource::Credential(name.to_owned())
            }
            None if source == "prompt" => SecretSource::Prompt,
            _ => {
                return Err(format!(
                    "unknown secret source {source:?}; use fd:N, env:VAR, file:PATH, credential:NAME or prompt"
                ))
            }
        };
        Ok(Self {
            name: name.to_owned(),
            source,
        })
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fd(fd) => write!(f, "fd:{fd}"),
            Self::Env(var) => write!(f, "env:{var}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Credential(name) => write!(f, "credential:{name}"),
            Self::Prompt => write!(f, "prompt"),
        }
    }
}

/// `--memory`: which memory holds the secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryArg {
    /// secretmem when the kernel offers it, else locked
    Auto,
    /// memfd_secret(2) pages, which not even root reads through /proc/PID/mem or ptrace; refuse to start without them
    Secretmem,
    /// anonymous memory pinned with mlock(2)
    Locked,
}

impl From<MemoryArg> for MemoryBackend {
    fn from(arg: MemoryArg) -> Self {
        match arg {
            MemoryArg::Auto => MemoryBackend::Auto,
            MemoryArg::Secretmem => MemoryBackend::SecretMem,
            MemoryArg::Locked => MemoryBackend::Locked,
        }
    }
}

/// The memory every secret of the daemon is held in: decided once at
/// start-up, so that all secrets land in the same kind of memory and the
/// status can say which, and why, even before (or without) any secret.
#[derive(Clone, Debug)]
pub struct Memory {
    /// The backend holding the secrets.
    pub backend: Backend,
    /// Why this backend (the status's `memory_note`), e.g. "secretmem
    /// unavailable: kernel booted without secretmem.enable=1".
    pub note: String,
    /// What each buffer is created with.
    choice: MemoryBackend,
}

impl Memory {
    /// Resolves `--memory` (else `DAZAI_MEMORY`, else auto) by creating, and
    /// dropping, a one-page buffer: an explicit `secretmem` the kernel does not
    /// offer stops start-up here with the cause and the fix.
    pub fn choose(flag: Option<MemoryArg>, policy: LockPolicy) -> Result<Self, Failure> {
        let refused = |error: SecretError| Failure::new(Exit::Hardening, error);
        let (choice, source) = match flag {
            Some(arg) => (MemoryBackend::from(arg), "--memory "),
            None => match MemoryBackend::from_env().map_err(refused)? {
                Some(choice) => (choice, "DAZAI_MEMORY="),
                None => (MemoryBackend::Auto, ""),
            },
        };
        let probe = SecretBuffer::with_backend(1, policy, choice).map_err(refused)?;
        let note = match choice {
            MemoryBackend::Auto => probe.backend_note().to_owned(),
            explicit => format!("{}; set by {source}{explicit}", probe.backend_note()),
        };
        Ok(Self {
            backend: probe.backend(),
            note,
            choice: match probe.backend() {
                Backend::SecretMem => MemoryBackend::SecretMem,
                Backend::Locked | Backend::Unlocked => MemoryBackend::Locked,
            },
        })
    }
}

/// The named secrets the daemon holds.
pub struct Vault {
    secrets: Vec<(String, SecretBuffer)>,
    memory: Memory,
}

impl Vault {
    /// Reads every secret straight into the memory chosen (see
    /// [`Memory::choose`]), in command-line order.
    pub fn load(
        specs: &[SecretSpec],
        policy: LockPolicy,
        memory: Option<MemoryArg>,
    ) -> Result<Self, Failure> {
        let mut vault = Self {
            secrets: Vec::new(),
            memory: Memory::choose(memory, policy)?,
        };
        let choice = vault.memory.choice;
        for spec in specs {
            if vault.get(&spec.name).is_some() {
                return Err(Failure::new(
                    Exit::Usage,
                    format!(
                        "secret {} is given twice; fix: give each --secret a distinct NAME",
                        spec.name
                    ),
                ));
            }
            let secret = read_secret(spec, policy, choice).map_err(|failure| {
                let (exit, cause) = match failure {
                    ReadFailure::Memory(error) => (Exit::Hardening, error.to_string()),
                    ReadFailure::Source(cause) => (Exit::Secret, cause),
                    ReadFailure::Cancelled => (
                        Exit::Interrupted,
                        "cancelled with Ctrl-C; what was typed is wiped; fix: run it again to type the secret".to_owned(),
                    ),
                };
                Failure::new(
                    exit,
                    format!(
                        "cannot read secret {} from {}: {cause}",
                        spec.name, spec.source
                    ),
                )
            })?;
            vault.secrets.push((spec.name.clone(), secret));
        }
        Ok(vault)
    }

    /// The secret called `name`, if held.
    pub fn get(&self, name: &str) -> Option<&SecretBuffer> {
        self.secrets
            .iter()
            .find(|(held, _)| held == name)
            .map(|(_, secret)| secret)
    }

    /// Names and buffers, in load order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SecretBuffer)> {
        self.secrets
            .iter()
            .map(|(name, secret)| (name.as_str(), secret))
    }

    /// The memory the secrets are held in, and why.
    pub fn memory(&self) -> &Memory {
        &self.memory
    }

    /// Wipes every buffer; returns how many were wiped.
    pub fn wipe_all(&mut self) -> usize {
        for (_, secret) in &mut self.secrets {
            secret.wipe();
        }
        self.secrets.len()
    }
}

/// Why one secret could not be read: its memory could not be made (exit 5,
/// like the memory probe that covers the first secret), or its source failed
/// (exit 6). A second secret over `RLIMIT_MEMLOCK` is a memory failure too.
enum ReadFailure {
    Memory(SecretError),
    Source(String),
    /// Ctrl-C at the prompt: what was typed is wiped.
    Cancelled,
}

impl From<String> for ReadFailure {
    fn from(cause: String) -> Self {
        Self::Source(cause)
    }
}

impl From<SecretError> for ReadFailure {
    fn from(error: SecretError) -> Self {
        match error {
            SecretError::TooLong { .. } | SecretError::Read { .. } => {
                Self::Source(error.to_string())
            }
            memory => Self::Memory(memory),
        }
    }
}

/// Reads one secret from its source into a new buffer of `choice`.
fn read_secret(
    spec: &SecretSpec,
    policy: LockPolicy,
    choice: MemoryBackend,
) -> Result<SecretBuffer, ReadFailure> {
    let mut secret = match &spec.source {
        SecretSource::Fd(fd) => {
            // SAFETY-free borrow: the fd number came from the user, so check it is open first.
            let file = take_inherited_fd(*fd)?;
            read_to_end(file.as_fd(), MAX_SECRET_BYTES, policy, choice)?
        }
        SecretSource::File(path) => read_file(path, policy, choice)?,
        SecretSource::Credential(name) => {
            let directory = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                "CREDENTIALS_DIRECTORY is not set; fix: credential:NAME is for a systemd service with LoadCredential=NAME:… or LoadCredentialEncrypted=; elsewhere use file:PATH".to_owned()
            })?;
            read_file(&PathBuf::from(directory).join(name), policy, choice)?
        }
        SecretSource::Env(var) => SecretBuffer::take_env_var_with_backend(var, policy, choice)?
            .ok_or_else(|| {
                format!("environment variable {var} is not set; fix: export it first")
            })?,
        SecretSource::Prompt => read_from_prompt(&spec.name, policy, choice)?,
    };
    secret.trim_trailing_newline();
    if secret.is_empty() {
        return Err(ReadFailure::Source(
            "the secret is empty; fix: give it at least one byte".into(),
        ));
    }
    Ok(secret)
}

/// Reads the file at `path` whole (at most [`MAX_SECRET_BYTES`]).
fn read_file(
    path: &std::path::Path,
    policy: LockPolicy,
    choice: MemoryBackend,
) -> Result<SecretBuffer, ReadFailure> {
    let file =
        File::open(path).map_err(|e| format!("{e}; fix: check the path and its permissions"))?;
    let size = file.metadata().map_err(|e| e.to_string())?.len() as usize;
    if size > MAX_SECRET_BYTES {
        return Err(ReadFailure::Source(format!(
            "the file holds {size} bytes, more than the {MAX_SECRET_BYTES}-byte limit; fix: hold a smaller secret"
        )));
    }
    read_to_end(file.as_fd(), size.max(1), policy, choice)
}

/// Takes ownership of an inherited descriptor, refusing one that is not open.
fn take_inherited_fd(fd: RawFd) -> Result<File, String> {
    nix::fcntl::fcntl(
        // SAFETY: the descriptor is only borrowed for this one fcntl call, which
        // fails cleanly with EBADF if the number is not an open descriptor.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|e| {
        format!("fd {fd} is not open ({e}); fix: pass the secret on that fd, e.g. `{fd}<file`")
    })?;
    use std::os::fd::FromRawFd;
    // SAFETY: the fd is open (checked above) and was handed to this process for
    // this secret alone; owning it closes it once the secret is read.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Reads a stream to EOF into a new buffer of `capacity` bytes.
fn read_to_end(
    fd: BorrowedFd<'_>,
    capacity: usize,
    policy: LockPolicy,
    choice: MemoryBackend,
) -> Result<SecretBuffer, ReadFailure> {
    let mut secret = SecretBuffer::with_backend(capacity, policy, choice)?;
    secret.read_from(fd)?;
    Ok(secret)
}

/// Asks on the controlling terminal with echo off and reads one line, with
/// the terminal's own editing keys; Ctrl-C cancels at once (the daemon keeps
/// its signals blocked, so the key is read as a byte, not a signal).
fn read_from_prompt(
    name: &str,
    policy: LockPolicy,
    choice: MemoryBackend,
) -> Result<SecretBuffer, ReadFailure> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            format!(
                "no controlling terminal to prompt on ({e}); fix: use fd:N, env:VAR or file:PATH"
            )
        })?;
    let saved = termios::tcgetattr(&tty).map_err(|e| e.to_string())?;
    let mut silent = saved.clone();
    silent
        .local_flags
        .remove(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG);
    silent.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    silent.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    let key = |index: SpecialCharacterIndices| saved.control_chars[index as usize];
    let keys = LineKeys {
        interrupt: key(SpecialCharacterIndices::VINTR),
        erase: key(SpecialCharacterIndices::VERASE),
        kill: key(SpecialCharacterIndices::VKILL),
        end_of_file: key(SpecialCharacterIndices::VEOF),
    };
    termios::tcsetattr(&tty, SetArg::TCSAFLUSH, &silent).map_err(|e| e.to_string())?;
    let prompt = format!("dazai: secret for {name} (input hidden): ");
    let result = nix::unistd::write(&tty, prompt.as_bytes())
        .map_err(|e| ReadFailure::Source(e.to_string()))
        .and_then(|_| {
            let mut secret = SecretBuffer::with_backend(MAX_SECRET_BYTES, policy, choice)?;
            match secret.read_typed_line_from(tty.as_fd(), keys)? {
                Typed::Entered => Ok(secret),
                Typed::Cancelled => Err(ReadFailure::Cancelled),
            }
        });
    // Echo comes back whatever happened, or the user's terminal stays silent.
    let _ = nix::unistd::write(&tty, b"\n");
    let _ = termios::tcsetattr(&tty, SetArg::TCSAFLUSH, &saved);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs_parse_every_source() {
        let cases = [
            ("a=fd:3", SecretSource::Fd(3)),
            ("b=env:API_KEY", SecretSource::Env("API_KEY".into())),
            (
                "c=file:/run/creds/c",
                SecretSource::File("/run/creds/c".into()),
            ),
            ("d=prompt", SecretSource::Prompt),
            ("e=credential:api", SecretSource::Credential("api".into())),
        ];
        for (text, source) in cases {
            let spec: SecretSpec = text.parse().unwrap();
            assert_eq!(spec.source, source);
            assert_eq!(format!("{}={}", spec.name, spec.source), text);
        }
    }

    #[test]
    fn bad_secret_specs_say_what_is_expected() {
        let sources = "use fd:N, env:VAR, file:PATH, credential:NAME or prompt";
        for (text, expected) in [
            (
                "noequals",
                "expected NAME=SOURCE, e.g. api=env:API_KEY".to_owned(),
            ),
            (
                "a b=prompt",
                r#"secret name "a b" must be 1-64 of A-Z a-z 0-9 _ . -"#.to_owned(),
            ),
            ("a=fd:x", "fd:N needs a file descriptor number".to_owned()),
            (
                "a=env:",
                format!(r#"unknown secret source "env:"; {sources}"#),
            ),
            (
                "a=ftp:x",
                format!(r#"unknown secret source "ftp:x"; {sources}"#),
            ),
            (
                "=prompt",
                r#"secret name "" must be 1-64 of A-Z a-z 0-9 _ . -"#.to_owned(),
            ),
        ] {
            assert_eq!(text.parse::<SecretSpec>(), Err(expected), "{text}");
        }
    }
}
