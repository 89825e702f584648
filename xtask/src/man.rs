//! `cargo xtask man`: writes the man page generated from the command line.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

/// Builds `dazai` and writes `target/man/dazai.1`.
pub(crate) fn run(sh: &Shell) -> Result<()> {
    let page = cmd!(sh, "cargo run --quiet --package dazai -- manpage")
        .read()
        .context("generating the man page with `dazai manpage`")?;
    sh.create_dir("target/man")?;
    sh.write_file("target/man/dazai.1", page + "\n")?;
    println!("wrote target/man/dazai.1 (view it with `man ./target/man/dazai.1`)");
    Ok(())
}
