//! x86's kernel as qemu boots it fastest: the ELF `vmlinux` out of Debian's
//! bzImage, found by the boot protocol's setup header.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::elf::le_field;

/// Writes the ELF `vmlinux` compressed inside the x86 bzImage `bzimage` to
/// `to` (see [`VmAssets::vmlinuz`](super::VmAssets::vmlinuz) for why), using
/// `work` for the payload.
pub(super) fn unpack_bzimage(bzimage: &Path, to: &Path, work: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    ensure!(
        image.get(0x202..0x206) == Some(b"HdrS"),
        "{} is not a bzImage",
        bzimage.display()
    );
    // The boot protocol's setup header: the payload follows the real-mode
    // setup sectors (0 of them means 4).
    let setup_sectors = match le_field(&image, 0x1f1, 1)? {
        0 => 4,
        sectors => sectors,
    };
    let start = (setup_sectors + 1) * 512 + le_field(&image, 0x248, 4)?;
    let length = le_field(&image, 0x24c, 4)?;
    let payload = image
        .get(start..)
        .and_then(|rest| rest.get(..length))
        .context("bzImage payload outside the file")?;
    // bookworm's and bullseye's payloads are xz, trixie's zstd; each ends
    // with the kernel's 4-byte size, which is neither.
    let (compressed, tool, args): (_, _, &[&str]) = if payload.starts_with(b"\xfd7zXZ\0") {
        (
            work.join("vmlinux.xz"),
            "xz",
            &["--decompress", "--stdout", "--single-stream"],
        )
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        (
            work.join("vmlinux.zst"),
            "zstd",
            &["--decompress", "--stdout"],
        )
    } else {
        bail!("the bzImage payload is neither xz (Debian 11, 12) nor zstd (Debian 13)");
    };
    let stream = &payload[..payload.len().saturating_sub(4)];
    fs::write(&compressed, stream).with_context(|| format!("write {}", compressed.display()))?;
    let out = fs::File::create(to).with_context(|| format!("create {}", to.display()))?;
    let unpacked = Command::new(tool)
        .args(args)
        .arg(&compressed)
        .stdout(out)
        .output()
        .with_context(|| format!("run {tool} (it unpacks the amd64 kernel)"))?;
    ensure!(
        unpacked.status.success(),
        "{tool} --decompress {} failed: {}",
        compressed.display(),
        String::from_utf8_lossy(&unpacked.stderr).trim()
    );
    Ok(())
}
