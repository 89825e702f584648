//! The root filesystem a VM boots with systemd as its PID 1, for the row
//! that starts the documented unit under systemd: Debian of the VM's
//! architecture and release, installed by `mmdebstrap --variant=minbase`
//! with its maintainer scripts run (for arm64 on this x86_64 host, through
//! qemu-user and binfmt_misc, which the caller makes ready with
//! `host::ForeignBinaries`: only to build the tree, never to run a test),
//! with the user `lab`, written into an ext4 image.
//!
//! The VM gets the image as a disk of its own, writes kept in a QEMU
//! snapshot (the cached image never changes); `lab-init` mounts it and
//! hands PID 1 over to its systemd (`lab.root=` on the kernel command line).

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::apt::mmdebstrap;
use super::userland::changelog_version;
use super::{DebianRelease, VmArch};
use crate::host::run;

/// systemd as PID 1, logind and D-Bus (`loginctl enable-linger` starts a
/// user's manager as a login would), as in the lab's systemd container; and
/// udev, which a booted system has (without it, units bound to a device,
/// such as the serial console's getty, wait for it until they time out).
const PACKAGES: &str = "--include=systemd,systemd-sysv,dbus,libpam-systemd,udev";

/// `lab`, the daemon's non-root user, with the uid `lab-init` runs it as.
const ADD_LAB: &str = r#"--customize-hook=chroot "$1" useradd --create-home --uid 1000 --user-group --shell /bin/sh --password '*' lab"#;

/// Free space in the image beyond its files: the journal and the user
/// manager's state, written while the VM runs.
const FREE_MIB: u64 = 256;

/// Builds the tree in `tree`, writes it into the ext4 image `image` and
/// removes the tree; returns the exact systemd package, for the report.
pub(super) fn build_systemd_root(
    arch: VmArch,
    release: DebianRelease,
    sources: &str,
    tree: &Path,
    image: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<String> {
    let options = ["--variant=minbase", PACKAGES, ADD_LAB];
    mmdebstrap(arch, release, sources, &options, tree, log)?;
    let systemd = changelog_version(tree, "systemd")?;
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
    Ok(systemd)
}

/// What the files of `tree` take, in MiB (`du`, which counts each hard link once).
fn tree_mib(tree: &Path) -> Result<u64> {
    let du = run(Command::new("du").args(["-s", "--block-size=1M"]).arg(tree))?;
    du.split_whitespace()
        .next()
        .and_then(|mib| mib.parse().ok())
        .with_context(|| format!("du of {}: {du:?}", tree.display()))
}
