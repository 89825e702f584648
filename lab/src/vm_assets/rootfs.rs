//! The root filesystem every lab VM boots: Debian of the VM's architecture
//! and release, installed by `mmdebstrap --variant=minbase` with its
//! maintainer scripts run (for arm64 on this x86_64 host, through
//! qemu-user and binfmt_misc, which the caller makes ready with
//! `host::ForeignBinaries`: only to build the tree, never to run a test),
//! with the user `lab`, written into an ext4 image.
//!
//! It holds what the rows run beside the lab's own static programs:
//! systemd as PID 1 with logind and a user manager, Debian's sshd (the
//! session loss row's logins) and Python (the reference daemon), procps and
//! iproute2 as in the containers' image. The VM gets the image as a disk of
//! its own, writes kept in a QEMU snapshot (the cached image never
//! changes); `lab-init` mounts it and hands PID 1 over to its systemd.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use flate2::read::GzDecoder;

use super::apt::mmdebstrap;
use super::{DebianRelease, VmArch};
use crate::host::run;

/// Where sshd is inside the VM.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Where Python is inside the VM: Debian's `python3`.
pub const PYTHON: &str = "/usr/bin/python3";

/// systemd as PID 1, logind and D-Bus (`loginctl enable-linger` starts a
/// user's manager as a login would), as in the lab's systemd container;
/// udev, which a booted system has (without it, units bound to a device,
/// such as the serial console's getty, wait for it until they time out);
/// sshd, Python, and the tools of the containers' image.
const PACKAGES: &str = "--include=systemd,systemd-sysv,dbus,libpam-systemd,udev,\
                        openssh-server,python3,procps,iproute2";

/// `lab`, the daemon's non-root user, with the uid the agent runs it as.
const ADD_LAB: &str = r#"--customize-hook=chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/sh --password '*' lab"#;

/// sshd starts with an environment that asks for it, with the lab's
/// configuration, as in the containers: Debian's own unit must not hold
/// port 22 first.
const NO_SSH_UNIT: &str = r#"--customize-hook=chroot "$1" systemctl mask ssh.service ssh.socket"#;

/// Free space in the image beyond its files: the journal and the user
/// manager's state, written while the VM runs.
const FREE_MIB: u64 = 256;

/// The exact Debian packages of what a root filesystem holds, for the
/// evidence report.
pub(super) struct RootPackages {
    pub systemd: String,
    pub openssh: String,
    /// `python3.11 3.11.2-6+deb12u8`.
    pub python: String,
}

/// Builds the tree of `arch` and `release` in `tree` from the apt `sources`
/// (one-line style), writes it into the ext4 image `image` and removes the
/// tree.
pub(super) fn build_root(
    arch: VmArch,
    release: DebianRelease,
    sources: &str,
    tree: &Path,
    image: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<RootPackages> {
    let options = ["--variant=minbase", PACKAGES, ADD_LAB, NO_SSH_UNIT];
    mmdebstrap(arch, release, sources, &options, tree, log)?;
    let python = python_version(tree)?;
    let packages = RootPackages {
        systemd: changelog_version(tree, "systemd")?,
        openssh: changelog_version(tree, "openssh-server")?,
        python: changelog_version(tree, &python)?,
    };
    let used_mib = tree_mib(tree)?;
    // metadata_csum would need the crc32c module in the VM; without it the
    // image mounts on 5.10 as on 6.12.
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-O",
            "^metadata_csum",
            "-L",
            "lab-root",
            "-d",
        ])
        .arg(tree)
        .arg(image)
        .arg(format!("{}M", used_mib + used_mib / 4 + FREE_MIB)))
    .context("write the root filesystem into an ext4 image")?;
    fs::remove_dir_all(tree).with_context(|| format!("remove {}", tree.display()))?;
    Ok(packages)
}

/// What the files of `tree` take, in MiB (`du`, which counts each hard link once).
fn tree_mib(tree: &Path) -> Result<u64> {
    let du = run(Command::new("du").args(["-s", "--block-size=1M"]).arg(tree))?;
    du.split_whitespace()
        .next()
        .and_then(|mib| mib.parse().ok())
        .with_context(|| format!("du of {}: {du:?}", tree.display()))
}

/// `python3.11`: the interpreter `/usr/bin/python3` links to, which names
/// its package.
fn python_version(tree: &Path) -> Result<String> {
    let link = tree.join(PYTHON.trim_start_matches('/'));
    let target = fs::read_link(&link).with_context(|| format!("read the link {PYTHON}"))?;
    let name = target
        .file_name()
        .context("the python3 link has no file name")?
        .to_string_lossy()
        .into_owned();
    ensure!(
        name.starts_with("python3.")
            && name["python3.".len()..].bytes().all(|b| b.is_ascii_digit()),
        "{PYTHON} links to {name}, not to python3.N"
    );
    Ok(name)
}

/// `openssh-server 1:9.2p1-2+deb12u10`: `package` and the version on the
/// first line of its own changelog.
fn changelog_version(tree: &Path, package: &str) -> Result<String> {
    let changelog = tree.join(format!("usr/share/doc/{package}/changelog.Debian.gz"));
    let mut text = String::new();
    GzDecoder::new(fs::File::open(&changelog).with_context(|| changelog.display().to_string())?)
        .read_to_string(&mut text)
        .with_context(|| format!("read {package}'s changelog"))?;
    let version = text
        .lines()
        .next()
        .and_then(|line| line.split_once('(')?.1.split_once(')'))
        .map(|(version, _)| version)
        .with_context(|| format!("no version on the first line of {package}'s changelog"))?;
    Ok(format!("{package} {version}"))
}
