//! Row **swap** — "`mlock` holds under real memory pressure: under a cgroup
//! memory limit with a real swapfile, a pressure process's pages go to swap,
//! and so do the daemon's own other pages when the kernel is asked to page
//! them out (`MADV_PAGEOUT` through `process_madvise`), while every mapping
//! the canary lies in stays `Locked` = `Size`, `Swap: 0`".

use std::time::Duration;

use anyhow::{Context, Result};

use crate::env::{Lab, PATIENCE};
use crate::host::Swapfile;
use crate::runner::Recorder;
use lab_guest::procfs::{status_field, Mapping, Scan};

/// The container's RAM limit and the pressure put on it (MiB).
const LIMIT_MIB: i64 = 128;
const PRESSURE_MIB: u64 = 300;

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    // Swapped off and removed when this function returns, however it returns.
    let _swap = Swapfile::enable(&lab.work.join("lab.swap"), 512)?;
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
                "a {} MiB swapfile is on; the container is limited to {LIMIT_MIB} MiB of RAM",
                512
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
            // Pressure on the daemon's own pages too: the kernel is asked to
            // page out every private mapping of it, which it does to all but
            // the locked ones.
            let advised = env.observe(&["pageout", &daemon.pid_arg()])?;
            let maps: Vec<Mapping> = serde_json::from_value(
                env.observe(&["maps", &daemon.pid_arg()])?["mappings"].clone(),
            )?;
            let daemon_swap: u64 = maps.iter().map(|m| m.swap_kib).sum();
            v.require(
                daemon_swap > 0,
                format!(
                    "asked to page out the daemon's private memory ({} bytes advised), the kernel put {daemon_swap} KiB of it in swap",
                    advised["advised_bytes"]
                ),
            );
            // The mappings that hold the secret, found by the canary itself.
            let found = env.observe(&["scan", &daemon.pid_arg(), &daemon.canary_file])?;
            let scan: Scan = serde_json::from_value(found["scan"].clone())
                .with_context(|| format!("observer said: {found}"))?;
            v.require(
                !scan.hits.is_empty(),
                format!("the scan finds the secret {} time(s) in the daemon", scan.hits.len()),
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
            v.figure(format!("pressure swapped {swapped}; secret Swap 0 kB"));
            Ok(())
        },
    );
    Ok(())
}
