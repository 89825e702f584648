//! Row **root reads memory** — "closed where possible, demonstrated where
//! not: with the `memfd_secret` backend, root with `CAP_SYS_PTRACE` finds 0
//! copies (`/proc/PID/mem` read → EIO); with the locked backend root CAN
//! read the secret before the wipe (shown, labelled as the documented limit)".

use anyhow::{Context, Result};

use crate::env::{Env, Lab};
use crate::runner::Recorder;
use lab_guest::procfs::Scan;

/// The row's scenario: the same attack on a daemon of each backend.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.env("root-reads-memory").cap_add("SYS_PTRACE").start()?;
    let secretmem = root_scans(&env, "secretmem")?;
    rec.check(
        "with the memfd_secret backend root finds no copy of the secret",
        |v| {
            let (backend, scan) = &secretmem;
            v.note(format!("the daemon reports backend {backend}"));
            v.require(backend == "secretmem", format!("backend {backend:?}"));
            v.require(
                scan.hits.is_empty(),
                format!(
                    "root read {} mappings: {} hits",
                    scan.mappings_read,
                    scan.hits.len()
                ),
            );
            v.require(
                scan.unreadable.iter().any(|m| m.contains("os error 5")),
                format!("unreadable mappings (EIO expected): {:?}", scan.unreadable),
            );
            v.figure(format!("{} hits, EIO", scan.hits.len()));
            Ok(())
        },
    );
    let locked = root_scans(&env, "locked")?;
    rec.check(
        "with the locked backend root reads the secret before the wipe",
        |v| {
            let (backend, scan) = &locked;
            v.note(format!("the daemon reports backend {backend}"));
            v.require(
                !scan.hits.is_empty(),
                format!(
                    "root with CAP_SYS_PTRACE read {} mappings of the non-dumpable daemon and found the secret {} time(s)",
                    scan.mappings_read,
                    scan.hits.len()
                ),
            );
            for hit in &scan.hits {
                v.note(format!("read at {:#x} in {}", hit.address, hit.mapping.describe()));
            }
            v.figure(format!("{} copy read by root", scan.hits.len()));
            v.as_limit();
            Ok(())
        },
    );
    Ok(())
}

/// Starts a daemon holding its secret in `memory` and lets root scan it:
/// the backend the daemon reports, and what the scan found.
fn root_scans(env: &Env, memory: &str) -> Result<(String, Scan)> {
    let daemon = env
        .daemon()
        .named(memory)
        .args(&["--memory", memory])
        .start()?;
    let status = daemon.dazai(env, &["status", "--json"])?;
    let status: serde_json::Value =
        serde_json::from_str(status.stdout.trim()).context("dazai status --json")?;
    let backend = status["secrets"][0]["backend"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let found = env.observe(&["scan", &daemon.pid_arg(), &daemon.canary_file])?;
    let scan: Scan = serde_json::from_value(found["scan"].clone())
        .with_context(|| format!("observer said: {found}"))?;
    Ok((backend, scan))
}
