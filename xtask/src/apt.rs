//! Installing Debian packages for a verb that needs them, each announced
//! with the reason it is needed (a fresh machine says what it installs).

use anyhow::Result;
use xshell::{cmd, Shell};

/// `apt-get install` of `packages` (name, why), after announcing each.
pub(crate) fn install(sh: &Shell, packages: &[(&str, &str)]) -> Result<()> {
    for (name, reason) in packages {
        println!("    installing {name} ({reason})");
    }
    let names: Vec<&str> = packages.iter().map(|(name, _)| *name).collect();
    cmd!(sh, "apt-get update -qq").run()?;
    cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends {names...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()?;
    Ok(())
}
