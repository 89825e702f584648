//! The few ELF64 header fields the lab reads, without an ELF library: the
//! machine of a kernel, module or busybox (a package of the wrong
//! architecture is refused) and a kernel module's `.modinfo`.

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};

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

/// One section of an ELF64 file: its header fields the lab reads, and its bytes.
struct Section<'a> {
    name: usize,
    data: &'a [u8],
}

/// Every section of `elf`, in the order of its section table.
fn sections(elf: &[u8]) -> Result<Vec<Section<'_>>> {
    let elf = elf_header(elf)?;
    let table = le_field(elf, 0x28, 8)?;
    let entry_size = le_field(elf, 0x3a, 2)?;
    let count = le_field(elf, 0x3c, 2)?;
    (0..count)
        .map(|index| {
            let header = table
                .checked_add(index * entry_size)
                .context("ELF section table offset")?;
            let offset = le_field(elf, header + 0x18, 8)?;
            let size = le_field(elf, header + 0x20, 8)?;
            // SHT_NOBITS (.bss) occupies no bytes of the file.
            let kind = le_field(elf, header + 4, 4)?;
            let data = if kind == 8 {
                &[][..]
            } else {
                elf.get(offset..)
                    .and_then(|rest| rest.get(..size))
                    .context("ELF section outside the file")?
            };
            Ok(Section {
                name: le_field(elf, header, 4)?,
                data,
            })
        })
        .collect()
}

/// The NUL-terminated string at `at` of a string table.
fn string_at(table: &[u8], at: usize) -> Result<String> {
    let rest = table.get(at..).context("ELF string outside its table")?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .context("ELF string without its NUL")?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The `.modinfo` section of a kernel module: NUL-separated `key=value`.
pub(super) fn modinfo_section(bytes: &[u8]) -> Result<&[u8]> {
    let sections = sections(bytes)?;
    let names_index = le_field(bytes, 0x3e, 2)?;
    let names = sections.get(names_index).context("no section names")?.data;
    sections
        .iter()
        .find(|section| string_at(names, section.name).is_ok_and(|name| name == ".modinfo"))
        .map(|section| section.data)
        .context("no .modinfo section")
}
