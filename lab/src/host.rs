//! Host settings a scenario changes, each behind a guard that puts it back
//! when dropped: at the end of the scenario, on an early `?` return, and
//! during a panic's unwinding.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A sysctl file (`/proc/sys/...`) set for the guard's lifetime.
pub struct Sysctl {
    path: PathBuf,
    saved: String,
}

impl Sysctl {
    /// Writes `value` to `path`, remembering what was there.
    pub fn set(path: &str, value: &str) -> Result<Self> {
        let saved = fs::read_to_string(path).with_context(|| format!("read {path}"))?;
        fs::write(path, value).with_context(|| format!("write {value:?} to {path}"))?;
        Ok(Self {
            path: path.into(),
            saved: saved.trim_end_matches('\n').to_owned(),
        })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.saved) {
            eprintln!(
                "lab: could not restore {} to {:?} ({e}); do it by hand",
                self.path.display(),
                self.saved
            );
        }
    }
}

/// A swapfile in use for the guard's lifetime: `swapoff` and removed on drop.
pub struct Swapfile {
    path: PathBuf,
}

impl Swapfile {
    /// Creates, formats and enables a swapfile of `mib` MiB at `path`.
    pub fn enable(path: &Path, mib: u64) -> Result<Self> {
        // The guard exists before the first change, so a failure half-way
        // still removes the file.
        let guard = Self { path: path.into() };
        run(Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", path.display()))
            .args(["bs=1M", &format!("count={mib}"), "status=none"]))?;
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        run(Command::new("mkswap").arg("--quiet").arg(path))?;
        run(Command::new("swapon").arg(path))?;
        Ok(guard)
    }
}

impl Drop for Swapfile {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.path).output();
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "lab: could not remove {} ({e}); run swapoff and rm by hand",
                    self.path.display()
                );
            }
        }
    }
}

/// `uname -r` of this machine: the kernel every container shares.
pub fn kernel_release() -> String {
    Command::new("uname")
        .arg("-r")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Runs `command` to its end, returning its stdout; a failure's error
/// carries its status and stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("output of {command:?}"))
}

/// binfmt_misc's directory: where the kernel lists the interpreters it
/// runs foreign binaries with.
const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Binaries of a foreign architecture runnable through qemu-user for the
/// guard's lifetime (binfmt_misc), so that mmdebstrap can run the maintainer
/// scripts of that architecture's packages. What the guard mounted or
/// registered, it unmounts and unregisters when dropped; what was there
/// before stays.
pub struct ForeignBinaries {
    registered: Option<PathBuf>,
    mounted: bool,
}

impl ForeignBinaries {
    /// `arch` as Rust names it (`aarch64`); on this machine's own
    /// architecture there is nothing to do.
    pub fn runnable(arch: &str) -> Result<Self> {
        let mut guard = Self {
            registered: None,
            mounted: false,
        };
        if arch == std::env::consts::ARCH {
            return Ok(guard);
        }
        if !Path::new(BINFMT_MISC).join("register").exists() {
            run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT_MISC]))
                .context("mount binfmt_misc")?;
            guard.mounted = true;
        }
        let entry = Path::new(BINFMT_MISC).join(format!("qemu-{arch}"));
        if !entry.exists() {
            // qemu-user-static's own rule, with the F flag: the interpreter
            // is opened now, so it runs inside mmdebstrap's chroot too.
            let rule = format!("/usr/lib/binfmt.d/qemu-{arch}.conf");
            let rule = fs::read_to_string(&rule)
                .with_context(|| format!("read {rule} (qemu-user-static)"))?;
            fs::write(Path::new(BINFMT_MISC).join("register"), rule.trim())
                .with_context(|| format!("register qemu-{arch} with binfmt_misc"))?;
            guard.registered = Some(entry);
        }
        Ok(guard)
    }
}

impl Drop for ForeignBinaries {
    fn drop(&mut self) {
        if let Some(entry) = &self.registered {
            if let Err(e) = fs::write(entry, "-1") {
                eprintln!(
                    "lab: could not unregister {} ({e}); echo -1 > it by hand",
                    entry.display()
                );
            }
        }
        if self.mounted {
            if let Err(e) = run(Command::new("umount").arg(BINFMT_MISC)) {
                eprintln!("lab: could not unmount {BINFMT_MISC} ({e:#}); do it by hand");
            }
        }
    }
}
