//! `cargo xtask publish TAG`: attaches everything in `target/dist` to the
//! GitHub release `TAG` with Debian's `gh` (GH_TOKEN from the workflow).
//! `cargo xtask dist` writes `target/dist` whole or not at all; an
//! incomplete one is refused all the same, so a release never ships a
//! binary without its checksums, evidence and provenance.

use std::path::Path;

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

/// What a release must carry besides the binaries.
const REQUIRED: [&str; 4] = [
    "SHA256SUMS",
    "provenance.json",
    "lab-report.json",
    "lab-report.md",
];

pub(crate) fn run(sh: &Shell, tag: &str) -> Result<()> {
    let dist = sh.current_dir().join("target/dist");
    check_complete(&dist)?;
    if cmd!(sh, "gh --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_err()
    {
        crate::apt::install(sh, &[("gh", "the GitHub CLI that creates the release")])?;
    }
    let mut assets: Vec<String> = std::fs::read_dir(&dist)?
        .map(|entry| entry.map(|e| e.path().display().to_string()))
        .collect::<std::io::Result<_>>()?;
    assets.sort();
    let title = format!("dazai {tag}");
    let notes = dist.join("lab-report.md");
    cmd!(
        sh,
        "gh release create {tag} --title {title} --notes-file {notes} {assets...}"
    )
    .run()?;
    Ok(())
}

/// Every file of [`REQUIRED`] is in `dist`.
fn check_complete(dist: &Path) -> Result<()> {
    let missing: Vec<&str> = REQUIRED
        .into_iter()
        .filter(|name| !dist.join(name).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} is missing {}; run `cargo xtask dist`, which writes it whole",
            dist.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_dist_is_refused_by_name() {
        let dist = tempfile::tempdir().unwrap();
        for name in ["SHA256SUMS", "provenance.json", "lab-report.json"] {
            std::fs::write(dist.path().join(name), "x").unwrap();
        }
        let error = check_complete(dist.path()).unwrap_err().to_string();
        assert!(error.contains("missing lab-report.md"), "{error}");
        std::fs::write(dist.path().join("lab-report.md"), "x").unwrap();
        check_complete(dist.path()).unwrap();
    }
}
