//! Row **swap** — "the secret is never written to swap" (its "what is
//! claimed" in docs/threat-model.md).
//!
//! The scenario: `mlock` holds under real memory pressure: under a cgroup
//! memory limit with real swap (the host's swapfile under the containers,
//! a swap disk in a VM), a pressure process's pages go to swap,
//! and so do the holder's own other pages when the kernel is asked to page
//! them out (`MADV_PAGEOUT` through `process_madvise`), while every mapping
//! the canary lies in stays `Locked` = `Size`, `Swap: 0`.

use std::time::Duration;

use anyhow::Result;

use crate::env::{Env, Lab, PATIENCE, SWAP_MIB};
use crate::runner::{Recorder, Verdict};
use crate::stand_in::hold_probe;
use lab_guest::procfs::{status_field, Mapping};

/// The container's RAM limit and the pressure put on it (MiB).
const LIMIT_MIB: i64 = 128;
const PRESSURE_MIB: u64 = 300;

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    // Swapped off when this function returns, however it returns.
    let _swap = lab.swap_on()?;
    let env = lab
        .env("swap")
        .cap_add("SYS_PTRACE")
        .cap_add("SYS_NICE")
        .memory(LIMIT_MIB, 1024)
        .start()?;
    // The locked backend: root can read it, so the scan can see the wipe
    // (secret memory would hide the canary from the observer either way).
    let daemon = env.daemon().args(&["--memory", "locked"]).start()?;
    rec.check(
        "the secret stays locked in RAM while the cgroup swaps",
        |v| {
            v.note(format!(
                "{SWAP_MIB} MiB of swap are on; the environment is limited to {LIMIT_MIB} MiB of RAM"
            ));
            let pressure = env.launch(
                "lab",
                "pressure",
                None,
                &["/lab/bin/lab-probe", "pressure", &PRESSURE_MIB.to_string()],
            )?;
            pressure.wait_output("touched", PATIENCE * 3)?;
            std::thread::sleep(Duration::from_millis(300));
            let status = env
                .exec("root", &["cat", &format!("/proc/{}/status", pressure.pid)])?
                .stdout;
            let swapped = status_field(&status, "VmSwap").unwrap_or_default();
            let swapped_kib: u64 = swapped
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            v.require(
                swapped_kib > 0,
                format!("the pressure process touched {PRESSURE_MIB} MiB and has VmSwap {swapped}"),
            );
            stays_in_ram(&env, daemon.pid(), &daemon.canary_file, v)?;
            v.figure(format!("pressure swapped {swapped}; secret Swap 0 kB"));
            Ok(())
        },
    );
    rec.control(
        "a holder that keeps a copy of its secret in ordinary heap (`lab-probe hold --heap-copy`)",
        "the mapping holding the secret",
        |v| {
            let (probe, canary) = hold_probe(&env, "heap-copy", &["--heap-copy"])?;
            stays_in_ram(&env, probe.pid, &canary, v)
        },
    );
    Ok(())
}

/// Asked to page out every private mapping of `pid`, the kernel swaps some
/// of it, and none of the mappings where the canary lies.
fn stays_in_ram(env: &Env, pid: i32, canary_file: &str, v: &mut Verdict) -> Result<()> {
    // Pressure on the holder's own pages too: the kernel is asked to page
    // out every private mapping of it, which it does to all but the locked ones.
    let advised = env.observe(&["pageout", &pid.to_string()])?;
    let maps: Vec<Mapping> =
        serde_json::from_value(env.observe(&["maps", &pid.to_string()])?["mappings"].clone())?;
    let swapped_kib: u64 = maps.iter().map(|m| m.swap_kib).sum();
    v.require(
        swapped_kib > 0,
        format!(
            "asked to page out the private memory of pid {pid} ({} bytes advised), the kernel put {swapped_kib} KiB of it in swap",
            advised["advised_bytes"]
        ),
    );
    // The mappings that hold the secret, found by the canary itself.
    let scan = env.scan(pid, canary_file)?;
    v.require(
        !scan.hits.is_empty(),
        format!(
            "the scan finds the secret {} time(s) in pid {pid}",
            scan.hits.len()
        ),
    );
    for hit in &scan.hits {
        let now = maps.iter().find(|m| m.start == hit.mapping.start);
        v.require(
            now.is_some_and(|m| m.swap_kib == 0 && m.locked_kib == m.size_kib),
            format!(
                "the mapping holding the secret at {:#x}, after the page-out: {}",
                hit.address,
                now.map_or("gone".to_owned(), Mapping::describe)
            ),
        );
    }
    Ok(())
}
