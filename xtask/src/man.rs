//! `cargo xtask man`: writes the man pages generated from the command line:
//! dazai(1) and one dazai-SUBCOMMAND(1) for each subcommand it names.

use std::path::PathBuf;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

/// Builds `dazai` and writes every page into `man/` of the target directory
/// (`$CARGO_TARGET_DIR`, else `target`).
pub(crate) fn run(sh: &Shell) -> Result<()> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("man");
    sh.create_dir(&dir)?;
    let dazai = |args: &[&str]| {
        cmd!(sh, "cargo run --quiet --package dazai -- manpage {args...}")
            .read()
            .with_context(|| {
                format!(
                    "generating a man page with `dazai manpage {}`",
                    args.join(" ")
                )
            })
    };
    let subcommands = dazai(&["--list"])?;
    let mut written = vec![dir.join("dazai.1")];
    sh.write_file(&written[0], dazai(&[])? + "\n")?;
    for name in subcommands.lines() {
        let path = dir.join(format!("dazai-{name}.1"));
        sh.write_file(&path, dazai(&[name])? + "\n")?;
        written.push(path);
    }
    println!(
        "wrote {} pages in {} (view one with `man {}`)",
        written.len(),
        dir.display(),
        written[0].display()
    );
    Ok(())
}
