//! Deliberately broken stand-ins for the daemon, which the rows' negative
//! controls point their own checks at: a check that stays green against one
//! of these proves nothing.

use anyhow::Result;

use crate::env::{fresh_canary, Env, Launched, PATIENCE};

/// `lab-probe hold FLAGS` as `lab`, holding a fresh canary (its file is
/// returned, for the observer's scans) in a `SecretBuffer`. With no flags it
/// is a correct holder: the same panic order as the daemon (wipe, then
/// `kill(self, SIGKILL)` on SIGUSR2), non-dumpable, but with no seccomp
/// filter; each flag breaks it in one way (`--skip-wipe`, `--heap-copy`,
/// `--leave-half`, `--unmap-unwiped`).
pub fn hold_probe(env: &Env, name: &str, flags: &[&str]) -> Result<(Launched, String)> {
    let canary = env.put(&format!("{name}.canary"), &fresh_canary())?;
    let argv = [&["/lab/bin/lab-probe", "hold"], flags].concat();
    let probe = env.launch("lab", name, Some(&canary), &argv)?;
    probe.wait_output("lab-probe hold ready", PATIENCE)?;
    Ok((probe, canary))
}
