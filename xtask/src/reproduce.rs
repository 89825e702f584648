//! `cargo xtask reproduce DIR`: anyone can check that a release's binaries
//! come from the source it names. Reads `DIR/SHA256SUMS` and the source
//! commit in `DIR/provenance.json`, clones this repository at that commit
//! into `target/reproduce` (a clean tree: nothing of the work tree leaks in),
//! builds each named executable there as `cargo xtask cross` does (the
//! pinned toolchain, in the toolchain image) and the man pages and
//! completions as `cargo xtask man` does, and compares SHA-256s. One byte of
//! difference in any file and it fails, naming it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::dist::provenance;

pub(crate) fn run(sh: &Shell, release: &Path) -> Result<()> {
    let expected = shipped_binaries(release)?;
    let statement: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(release.join("provenance.json"))
            .with_context(|| format!("read {}/provenance.json", release.display()))?,
    )
    .context("parse provenance.json")?;
    let commit = provenance::source_commit(&statement)
        .context("provenance.json is not an in-toto statement with SLSA provenance naming a source commit")?
        .to_owned();
    let clone = sh.current_dir().join("target/reproduce");
    println!(
        "==> reproduce: a clean clone of {commit} in {}",
        clone.display()
    );
    let _ = std::fs::remove_dir_all(&clone);
    let origin = sh.current_dir();
    cmd!(sh, "git clone --quiet --no-checkout {origin} {clone}").run()?;
    cmd!(sh, "git -C {clone} checkout --quiet --detach {commit}")
        .run()
        .with_context(|| {
            format!("this repository has no commit {commit}: fetch the release's tag first")
        })?;
    // The toolchain image is built and run by docker.
    let _dockerd = crate::lab::Dockerd::ensure_running(&origin)?;
    let in_clone = Shell::new()?;
    in_clone.change_dir(&clone);
    crate::cross::prepare(&in_clone)?;
    let mut rebuilt = Vec::new();
    for target in crate::cross::TARGETS {
        if !expected
            .iter()
            .any(|(name, _)| name.ends_with(&format!("-{target}")))
        {
            continue;
        }
        println!("==> reproduce: the executables for {target}");
        for built in crate::cross::build_shipped(&in_clone, target)? {
            rebuilt.push((format!("{}-{target}", built.name), built.sha256));
        }
    }
    if expected.iter().any(|(name, _)| is_generated(name)) {
        println!("==> reproduce: the man pages and completions (cargo xtask man)");
        let target_dir = clone.join("target");
        cmd!(in_clone, "cargo xtask man")
            .env("CARGO_TARGET_DIR", &target_dir)
            .run()?;
        for (name, _) in expected.iter().filter(|(name, _)| is_generated(name)) {
            let sha256 = lab::images::sha256_file(&target_dir.join(name))?;
            rebuilt.push((name.clone(), sha256));
        }
    }
    for line in compare(&expected, &rebuilt)? {
        println!("    {line}");
    }
    println!(
        "==> reproduce: every file of {} rebuilt byte for byte from {commit}",
        release.display()
    );
    Ok(())
}

/// Whether a file of the release is generated text (by `cargo xtask man`)
/// rather than an executable.
fn is_generated(name: &str) -> bool {
    name.starts_with("man/") || name.starts_with("completions/")
}

/// `(name, sha256)` of every line of `DIR/SHA256SUMS` (`sha256sum` format).
fn shipped_binaries(release: &Path) -> Result<Vec<(String, String)>> {
    let sums = std::fs::read_to_string(release.join("SHA256SUMS"))
        .with_context(|| format!("read {}/SHA256SUMS", release.display()))?;
    let mut binaries = Vec::new();
    for line in sums.lines().filter(|line| !line.trim().is_empty()) {
        let Some((sha256, name)) = line.split_once("  ") else {
            bail!("SHA256SUMS: {line:?} is not `<sha256>  <name>`");
        };
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("SHA256SUMS: {sha256:?} is not a SHA-256");
        }
        binaries.push((name.to_owned(), sha256.to_ascii_lowercase()));
    }
    if binaries.is_empty() {
        bail!("SHA256SUMS names no binary");
    }
    Ok(binaries)
}

/// One line per binary, `same` or how it differs; an error if any differs.
fn compare(expected: &[(String, String)], rebuilt: &[(String, String)]) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut differ = Vec::new();
    for (name, shipped) in expected {
        match rebuilt.iter().find(|(built, _)| built == name) {
            Some((_, sha)) if sha == shipped => lines.push(format!("{name}: {sha} (same)")),
            Some((_, sha)) => {
                lines.push(format!("{name}: shipped {shipped}, rebuilt {sha}"));
                differ.push(name.as_str());
            }
            None => {
                lines.push(format!("{name}: not rebuilt"));
                differ.push(name.as_str());
            }
        }
    }
    if !differ.is_empty() {
        bail!(
            "not reproduced: {} ({})",
            differ.join(", "),
            lines.join("; ")
        );
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::dist::hex;

    /// A release directory whose SHA256SUMS names `binaries`.
    fn release(binaries: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let sums: String = binaries
            .iter()
            .map(|(name, bytes)| format!("{}  {name}\n", hex(&Sha256::digest(bytes))))
            .collect();
        std::fs::write(dir.path().join("SHA256SUMS"), sums).unwrap();
        dir
    }

    #[test]
    fn a_rebuild_that_differs_by_one_byte_is_not_a_reproduction() {
        let x86 = b"\x7fELF dazai for x86_64".to_vec();
        let arm = b"\x7fELF dazai for aarch64".to_vec();
        let dir = release(&[
            ("dazai-x86_64-unknown-linux-musl", &x86),
            ("dazai-aarch64-unknown-linux-musl", &arm),
        ]);
        let expected = shipped_binaries(dir.path()).unwrap();
        let rebuilt = |arm: &[u8]| {
            vec![
                (
                    "dazai-x86_64-unknown-linux-musl".to_owned(),
                    hex(&Sha256::digest(&x86)),
                ),
                (
                    "dazai-aarch64-unknown-linux-musl".to_owned(),
                    hex(&Sha256::digest(arm)),
                ),
            ]
        };
        let same = compare(&expected, &rebuilt(&arm)).unwrap();
        assert!(same.iter().all(|line| line.ends_with("(same)")), "{same:?}");

        let mut changed = arm.clone();
        changed[7] ^= 1;
        let error = compare(&expected, &rebuilt(&changed))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("not reproduced: dazai-aarch64-unknown-linux-musl ("),
            "{error}"
        );
    }

    #[test]
    fn a_binary_named_but_not_rebuilt_is_not_a_reproduction() {
        let dir = release(&[("dazai-x86_64-unknown-linux-musl", b"x")]);
        let expected = shipped_binaries(dir.path()).unwrap();
        let error = compare(&expected, &[]).unwrap_err().to_string();
        assert!(error.contains("not rebuilt"), "{error}");
    }

    #[test]
    fn a_malformed_sha256sums_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("SHA256SUMS"), "abc  dazai-x\n").unwrap();
        assert!(shipped_binaries(dir.path()).is_err());
        std::fs::write(dir.path().join("SHA256SUMS"), "").unwrap();
        assert!(shipped_binaries(dir.path()).is_err());
    }
}
