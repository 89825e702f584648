//! The binaries: the one measured (release, `--features seccomp`, the build
//! the lab attacks), staged in `target/bench/bin` so that another build cannot
//! swap it mid-run, and the static musl release builds, whose size is reported.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use xshell::{cmd, Shell};

pub(crate) const MUSL: &str = "x86_64-unknown-linux-musl";

/// One built binary.
pub(crate) struct Binary {
    pub target: &'static str,
    pub features: &'static str,
    pub bytes: u64,
    pub stripped: bool,
    pub static_: bool,
}

impl Binary {
    fn of(path: &Path, target: &'static str, features: &'static str) -> Result<Binary> {
        let elf = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        Ok(Binary {
            target,
            features,
            bytes: elf.len() as u64,
            stripped: !has_section_of_type(&elf, SHT_SYMTAB),
            static_: !has_segment_of_type(&elf, PT_INTERP),
        })
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "target": self.target,
            "features": self.features,
            "bytes": self.bytes,
            "stripped": self.stripped,
            "static": self.static_,
        })
    }
}

pub(crate) struct Built {
    /// The staged copy of the measured binary.
    pub measured: PathBuf,
    pub binaries: Vec<Binary>,
}

pub(crate) fn build(sh: &Shell) -> Result<Built> {
    ensure_musl_target(sh)?;
    let target_dir = sh.current_dir().join("target");
    let mut binaries = Vec::new();

    cmd!(sh, "cargo build --release -p dazai --features seccomp").run()?;
    let release = target_dir.join("release/dazai");
    binaries.push(Binary::of(&release, "x86_64-unknown-linux-gnu", "seccomp")?);
    let staged = target_dir.join("bench/bin/dazai");
    fs::create_dir_all(staged.parent().unwrap_or(&target_dir))?;
    fs::copy(&release, &staged).with_context(|| format!("stage {}", staged.display()))?;

    // Both feature sets link to the same path: measure each right after its build.
    let musl = target_dir.join(MUSL).join("release/dazai");
    cmd!(sh, "cargo build --release --target {MUSL} -p dazai").run()?;
    binaries.push(Binary::of(&musl, MUSL, "default")?);
    cmd!(
        sh,
        "cargo build --release --target {MUSL} -p dazai --features seccomp"
    )
    .run()?;
    binaries.push(Binary::of(&musl, MUSL, "seccomp")?);
    Ok(Built {
        measured: staged,
        binaries,
    })
}

/// The musl standard library ships as a rustup target; Rust links it with its
/// own self-contained C runtime, so no musl-gcc (musl-tools) is needed.
fn ensure_musl_target(sh: &Shell) -> Result<()> {
    let installed = cmd!(sh, "rustup target list --installed").quiet().read()?;
    if !installed.lines().any(|line| line.trim() == MUSL) {
        println!("    adding the rustup target {MUSL} (for the static binary's size)");
        cmd!(sh, "rustup target add {MUSL}").run()?;
    }
    Ok(())
}

const SHT_SYMTAB: u32 = 2;
const PT_INTERP: u32 = 3;

/// Whether a 64-bit little-endian ELF file has a section of `kind` (a
/// `.symtab` survives unless the binary is stripped).
fn has_section_of_type(elf: &[u8], kind: u32) -> bool {
    let (Some(offset), Some(size), Some(count)) = (
        read_u64(elf, 0x28),
        read_u16(elf, 0x3a),
        read_u16(elf, 0x3c),
    ) else {
        return false;
    };
    (0..count as u64).any(|i| read_u32(elf, (offset + i * size as u64 + 4) as usize) == Some(kind))
}

/// Whether it has a program header of `kind` (a dynamically linked binary
/// names its interpreter, `ld.so`, in `PT_INTERP`).
fn has_segment_of_type(elf: &[u8], kind: u32) -> bool {
    let (Some(offset), Some(size), Some(count)) = (
        read_u64(elf, 0x20),
        read_u16(elf, 0x36),
        read_u16(elf, 0x38),
    ) else {
        return false;
    };
    (0..count as u64).any(|i| read_u32(elf, (offset + i * size as u64) as usize) == Some(kind))
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}
