//! The few ELF64 header fields the lab reads, without an ELF library: the
//! machine of a kernel, module or busybox (a package of the wrong
//! architecture is refused), and a kernel module's `.modinfo`.

use std::fs;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::VmArch;

/// Refuses an executable or module built for another architecture.
pub(super) fn check_machine(arch: VmArch, path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let machine = le_field(elf_header(&bytes)?, 0x12, 2)?;
    ensure!(
        machine == arch.elf_machine(),
        "{} is for ELF machine {machine}, not {}",
        path.display(),
        arch.rust_arch()
    );
    Ok(())
}

/// `bytes` if they start like a little-endian ELF64 file (both VM
/// architectures are); the header fields below assume that layout.
fn elf_header(bytes: &[u8]) -> Result<&[u8]> {
    ensure!(
        bytes.len() >= 64 && bytes.starts_with(b"\x7fELF") && bytes[4] == 2 && bytes[5] == 1,
        "not a little-endian ELF64 file"
    );
    Ok(bytes)
}

/// The little-endian unsigned field of `len` bytes at `at` (ELF and bzImage headers).
pub(super) fn le_field(bytes: &[u8], at: usize, len: usize) -> Result<usize> {
    let field = bytes
        .get(at..)
        .and_then(|rest| rest.get(..len))
        .context("truncated header")?;
    Ok(field
        .iter()
        .rev()
        .fold(0, |value, &byte| (value << 8) | usize::from(byte)))
}

/// The `.modinfo` section of a kernel module: NUL-separated `key=value`.
pub(super) fn modinfo_section(bytes: &[u8]) -> Result<&[u8]> {
    let elf = elf_header(bytes)?;
    let table = le_field(elf, 0x28, 8)?;
    let entry_size = le_field(elf, 0x3a, 2)?;
    let count = le_field(elf, 0x3c, 2)?;
    let names_index = le_field(elf, 0x3e, 2)?;
    let section = |index: usize| -> Result<(usize, &[u8])> {
        let header = table
            .checked_add(index * entry_size)
            .context("ELF section table offset")?;
        let name = le_field(elf, header, 4)?;
        let offset = le_field(elf, header + 0x18, 8)?;
        let size = le_field(elf, header + 0x20, 8)?;
        let data = elf
            .get(offset..)
            .and_then(|rest| rest.get(..size))
            .context("ELF section outside the file")?;
        Ok((name, data))
    };
    let (_, names) = section(names_index)?;
    for index in 0..count {
        let (name, data) = section(index)?;
        let name = names.get(name..).unwrap_or_default();
        if name.split(|&b| b == 0).next() == Some(b".modinfo") {
            return Ok(data);
        }
    }
    bail!("no .modinfo section")
}
