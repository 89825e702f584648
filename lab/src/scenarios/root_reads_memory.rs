//! Row **root reads memory** — "what secretmem closes: with the
//! `memfd_secret` backend (`--memory secretmem`, the automatic choice where
//! the kernel offers it) root cannot read the secret through `/proc/PID/mem`,
//! `ptrace(PTRACE_PEEKDATA)` or `process_vm_readv`: the pages are out of the
//! kernel's direct map. With the locked backend root can read the secret (the
//! documented limit)" (its "what is claimed" in docs/threat-model.md).
//!
//! The scenario: closed where possible, demonstrated where not: with the
//! `memfd_secret` backend, root with `CAP_SYS_PTRACE` finds 0 copies
//! (`/proc/PID/mem` read of the `/secretmem` mapping itself → EIO); with the
//! locked backend root CAN read the secret before the wipe (shown, labelled
//! as the documented limit). In both, the supervised program's
//! `dazai get` first returns the secret, so a scan that finds nothing is a
//! scan of a daemon that holds it.

use anyhow::{Context, Result};

use crate::env::{wait_for, Env, Lab, PATIENCE, RUN};
use crate::runner::{Recorder, Verdict};
use lab_guest::procfs::Scan;

/// The row's scenario: the same attack on a daemon of each backend.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab.env("root-reads-memory").cap_add("SYS_PTRACE").start()?;
    let (backend, note) = automatic_backend(&env)?;
    if backend == "secretmem" {
        let secretmem = root_scans(&env, "secretmem")?;
        rec.check(
            "with the memfd_secret backend root finds no copy of the secret",
            |v| root_finds_no_copy(&secretmem, v),
        );
    } else {
        // A kernel before 5.14 (or one built or booted without secretmem):
        // what most users of older kernels get, shown as the limit it is.
        rec.check(
            "without memfd_secret in the kernel, the daemon falls back to the locked backend and says why (the limit)",
            |v| {
                v.require(
                    backend == "locked" && note.contains("secretmem unavailable"),
                    format!("a daemon left to choose reports backend {backend}: {note}"),
                );
                v.figure("locked: no memfd_secret");
                v.as_limit();
                Ok(())
            },
        );
    }
    let locked = root_scans(&env, "locked")?;
    rec.check(
        "with the locked backend root reads the secret before the wipe",
        |v| {
            locked.loaded(v);
            let scan = &locked.scan;
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
    // Whatever the daemon reports of its backend, the kernel's EIO decides.
    rec.control(
        "a daemon of the locked backend put to the secretmem claim",
        "reading the /secretmem mapping itself gives EIO",
        |v| root_finds_no_copy(&locked, v),
    );
    Ok(())
}

/// The backend and its note that `dazai status` reports of a daemon left
/// to choose (`--memory auto`, the default).
fn automatic_backend(env: &Env) -> Result<(String, String)> {
    let daemon = env.daemon().named("automatic").start()?;
    let status = daemon.dazai(env, &["status", "--json"])?;
    let status: serde_json::Value =
        serde_json::from_str(status.stdout.trim()).context("dazai status --json")?;
    let field = |value: &serde_json::Value| value.as_str().unwrap_or("?").to_owned();
    Ok((
        field(&status["secrets"][0]["backend"]),
        field(&status["memory_note"]),
    ))
}

/// The secretmem claim: the kernel refuses root the `/secretmem` mapping
/// itself (EIO), and no trace of the secret is anywhere root can read.
pub fn root_finds_no_copy(found: &RootScan, v: &mut Verdict) -> Result<()> {
    found.loaded(v);
    let scan = &found.scan;
    // The backend as the kernel shows it, not as the daemon says.
    let refused: Vec<&String> = scan
        .unreadable
        .iter()
        .filter(|m| m.contains("/secretmem") && m.contains("os error 5"))
        .collect();
    v.require(
        !refused.is_empty(),
        format!("reading the /secretmem mapping itself gives EIO: {refused:?}"),
    );
    v.require(
        scan.hits.is_empty(),
        format!(
            "root read {} mappings: {} traces of the secret",
            scan.mappings_read,
            scan.hits.len()
        ),
    );
    v.figure(format!("{} hits, EIO", scan.hits.len()));
    Ok(())
}

/// What root's scan of one daemon showed.
pub struct RootScan {
    /// The backend the daemon reports (a note: the evidence is the scan).
    reported: String,
    /// Whether the supervised program's `dazai get` returned the canary.
    handed_out: bool,
    scan: Scan,
}

impl RootScan {
    /// The control: the daemon held the secret when root scanned it.
    fn loaded(&self, v: &mut Verdict) {
        v.note(format!("the daemon reports backend {}", self.reported));
        v.require(
            self.handed_out,
            "before the scan, the supervised program's `dazai get` returned the secret",
        );
    }
}

/// Starts a daemon holding its secret in `memory`; once its supervised
/// program has obtained the secret, root scans it.
pub fn root_scans(env: &Env, memory: &str) -> Result<RootScan> {
    let got = format!("{RUN}/got-{memory}");
    // Through `cat`: the VMs' 9p share cannot take a write straight from secretmem.
    let program =
        format!("/lab/bin/dazai get api | cat > {got}.part && mv {got}.part {got}; exec sleep 600");
    let daemon = env
        .daemon()
        .named(memory)
        .args(&["--memory", memory])
        .exec(&["/bin/sh", "-c", &program])
        .start()?;
    let _client = daemon.attach_client(env)?;
    let handed = wait_for("the supervised program's dazai get", PATIENCE, || {
        std::fs::read(env.run_dir.join(format!("got-{memory}"))).ok()
    })?;
    let status = daemon.dazai(env, &["status", "--json"])?;
    let status: serde_json::Value =
        serde_json::from_str(status.stdout.trim()).context("dazai status --json")?;
    let reported = status["secrets"][0]["backend"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let scan = env.scan(daemon.pid(), &daemon.canary_file)?;
    Ok(RootScan {
        reported,
        handed_out: handed == daemon.canary,
        scan,
    })
}
