//! x86's kernel as qemu boots it fastest: the ELF `vmlinux` out of Debian's
//! bzImage, found by the boot protocol's setup header.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

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
    ensure!(
        payload.starts_with(b"\xfd7zXZ\0"),
        "the bzImage payload is not xz, which bookworm's kernels use"
    );
    let compressed = work.join("vmlinux.xz");
    fs::write(&compressed, payload).with_context(|| format!("write {}", compressed.display()))?;
    let out = fs::File::create(to).with_context(|| format!("create {}", to.display()))?;
    // `--single-stream`: the payload ends with the kernel's 4-byte size,
    // which is not xz.
    let xz = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .arg(&compressed)
        .stdout(out)
        .output()
        .context("run xz (xz-utils unpacks the amd64 kernel)")?;
    ensure!(
        xz.status.success(),
        "xz --decompress {} failed: {}",
        compressed.display(),
        String::from_utf8_lossy(&xz.stderr).trim()
    );
    Ok(())
}
