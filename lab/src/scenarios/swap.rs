//! Row **swap** — "`mlock` holds under real memory pressure: daemon's secret
//! mapping: `Locked` = `Size`, VmFlags `lo`; under a cgroup memory limit with
//! a real swapfile, other pages of a pressure process go to swap while the
//! locked mapping stays `Swap: 0`".

use std::time::Duration;

use anyhow::Result;

use crate::env::{Lab, PATIENCE};
use crate::host::Swapfile;
use crate::runner::Recorder;
use lab_guest::procfs::{status_field, Mapping};

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
            let maps: Vec<Mapping> = serde_json::from_value(
                env.observe(&["maps", &daemon.pid_arg()])?["mappings"].clone(),
            )?;
            let secret: Vec<&Mapping> = maps.iter().filter(|m| m.is_secret_shaped()).collect();
            v.require(
                !secret.is_empty(),
                "the daemon has a secret mapping (VmFlags lo dd, Locked = Size)",
            );
            for mapping in &secret {
                v.require(
                    mapping.swap_kib == 0 && mapping.locked_kib == mapping.size_kib,
                    format!("secret mapping under pressure: {}", mapping.describe()),
                );
            }
            let daemon_swap: u64 = maps.iter().map(|m| m.swap_kib).sum();
            v.note(format!(
                "the daemon's other pages in swap: {daemon_swap} KiB"
            ));
            v.figure(format!("pressure swapped {swapped}; secret Swap 0 kB"));
            Ok(())
        },
    );
    Ok(())
}
