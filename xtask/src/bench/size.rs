//! The executables as shipped: `dazai` and `dazai-mcp`, static musl, built
//! by `cross` for both targets exactly as `cargo xtask dist` ships them (the
//! same files the lab attacks). The x86_64 `dazai` is the one measured,
//! staged in `target/bench/bin` so that another build cannot swap it
//! mid-run. Their sizes are reported, with each crate's share of the code
//! as `cargo bloat` attributes it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use xshell::{cmd, Shell};

pub(crate) const MUSL: &str = "x86_64-unknown-linux-musl";

/// The `cargo-bloat` release the per-crate table was made with.
const CARGO_BLOAT_VERSION: &str = "0.12.1";

/// Crates shown by name in the per-crate table; the rest are summed.
pub(crate) const CRATES_SHOWN: usize = 14;

/// One shipped executable.
pub(crate) struct Binary {
    /// `dazai` or `dazai-mcp`.
    pub name: String,
    pub target: &'static str,
    pub bytes: u64,
    pub stripped: bool,
    pub static_: bool,
}

impl Binary {
    fn of(path: &Path, name: &str, target: &'static str) -> Result<Binary> {
        let elf = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        Ok(Binary {
            name: name.to_owned(),
            target,
            bytes: elf.len() as u64,
            stripped: !has_section_of_type(&elf, SHT_SYMTAB),
            static_: !has_segment_of_type(&elf, PT_INTERP),
        })
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "executable": self.name,
            "target": self.target,
            "features": "seccomp",
            "bytes": self.bytes,
            "stripped": self.stripped,
            "static": self.static_,
        })
    }
}

/// Each crate's share of one executable's code (`.text`), by `cargo bloat
/// --crates` on an unstripped build of the same source, target and profile.
pub(crate) struct CrateSizes {
    /// `dazai` or `dazai-mcp`.
    pub executable: String,
    /// The size of `.text`, all crates together.
    pub text_bytes: u64,
    /// By crate, largest first.
    pub crates: Vec<(String, u64)>,
}

impl CrateSizes {
    /// The bytes of `.text` `krate` takes in this executable (0: none).
    pub(crate) fn of(&self, krate: &str) -> u64 {
        self.crates
            .iter()
            .find(|(name, _)| name == krate)
            .map_or(0, |(_, bytes)| *bytes)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "executable": self.executable,
            "text_bytes": self.text_bytes,
            "crates": self.crates.iter().map(|(name, bytes)| json!({ "name": name, "bytes": bytes })).collect::<Vec<_>>(),
        })
    }
}

pub(crate) struct Built {
    /// The staged copy of the measured executable.
    pub measured: PathBuf,
    pub binaries: Vec<Binary>,
    pub crate_sizes: Vec<CrateSizes>,
}

/// Builds what `cargo xtask dist` ships with `cross` (it needs dockerd for
/// its toolchain image), stages the x86_64 `dazai`, and attributes the code.
pub(crate) fn build(sh: &Shell) -> Result<Built> {
    let _dockerd = crate::lab::Dockerd::ensure_running(&sh.current_dir())?;
    crate::cross::prepare(sh)?;
    let mut binaries = Vec::new();
    let mut measured = None;
    for target in crate::cross::TARGETS {
        for built in crate::cross::build_shipped(sh, target)? {
            binaries.push(Binary::of(&built.path, &built.name, target)?);
            if target == MUSL && built.name == "dazai" {
                let staged = sh.current_dir().join("target/bench/bin/dazai");
                fs::create_dir_all(staged.parent().context("a directory")?)?;
                fs::copy(&built.path, &staged)
                    .with_context(|| format!("stage {}", staged.display()))?;
                measured = Some(staged);
            }
        }
    }
    let crate_sizes = crate::cross::EXECUTABLES
        .iter()
        .map(|executable| crate_sizes(sh, executable))
        .collect::<Result<_>>()?;
    Ok(Built {
        measured: measured.context("cross built no x86_64 dazai")?,
        binaries,
        crate_sizes,
    })
}

/// `cargo bloat --crates` for one executable, x86_64 musl, with symbols
/// kept (the shipped build strips them, and cargo bloat reads them), in a
/// target directory of its own so that it never touches the shipped files.
fn crate_sizes(sh: &Shell, executable: &str) -> Result<CrateSizes> {
    ensure_cargo_bloat(sh)?;
    let target_dir = sh.current_dir().join("target/bloat");
    let output = cmd!(
        sh,
        "cargo bloat --release --crates -p dazai --bin {executable} --features seccomp --target {MUSL} -n 0 --message-format json"
    )
    .env("CARGO_PROFILE_RELEASE_STRIP", "false")
    .env("CARGO_TARGET_DIR", &target_dir)
    .read()
    .with_context(|| format!("cargo bloat --crates for {executable}"))?;
    parse_bloat(executable, &output)
}

/// Reads `cargo bloat --crates --message-format json`.
fn parse_bloat(executable: &str, json: &str) -> Result<CrateSizes> {
    let bloat: Value = serde_json::from_str(json).context("parse cargo bloat's JSON")?;
    let (Some(text_bytes), Some(crates)) = (
        bloat["text-section-size"].as_u64(),
        bloat["crates"].as_array(),
    ) else {
        bail!("cargo bloat's JSON has no text-section-size or crates: {json}");
    };
    let mut crates: Vec<(String, u64)> = crates
        .iter()
        .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["size"].as_u64()?)))
        .collect();
    if crates.is_empty() {
        bail!("cargo bloat attributed no code to any crate: {json}");
    }
    crates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(CrateSizes {
        executable: executable.to_owned(),
        text_bytes,
        crates,
    })
}

fn ensure_cargo_bloat(sh: &Shell) -> Result<()> {
    if cmd!(sh, "cargo bloat --version")
        .quiet()
        .ignore_stderr()
        .read()
        .is_ok()
    {
        return Ok(());
    }
    println!("    installing cargo-bloat {CARGO_BLOAT_VERSION} (cargo install --locked) for the per-crate size table");
    cmd!(
        sh,
        "cargo install --locked cargo-bloat --version {CARGO_BLOAT_VERSION}"
    )
    .run()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_bloats_crate_table_is_read_largest_first() {
        let json = r#"{"file-size":100,"text-section-size":60,"crates":[{"name":"std","size":10},{"name":"dazai","size":40},{"name":"nix","size":10}]}"#;
        let sizes = parse_bloat("dazai", json).unwrap();
        assert_eq!(sizes.text_bytes, 60);
        let names: Vec<&str> = sizes.crates.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dazai", "nix", "std"]);
        assert_eq!(sizes.of("nix"), 10);
        assert_eq!(sizes.of("tokio"), 0);
        assert!(parse_bloat("dazai", r#"{"crates":[]}"#).is_err());
    }
}
