//! `lab-observer`: the lab's root helper. Run as root with `CAP_SYS_PTRACE`
//! beside the shipped `dazai` binary (no test hooks in the daemon); prints
//! one JSON object per finding on stdout.
//!
//! ```text
//! lab-observer maps PID                   every mapping with Size/Locked/Swap/VmFlags
//! lab-observer scan PID CANARY_FILE       every canary hit in readable memory, with its mapping
//! lab-observer wipe PID CANARY_FILE [HELD] stop at kill(PID, SIGKILL) entry, scan, let it die
//! lab-observer wipe-at-exit PID CANARY_FILE [HELD]  stop at exit_group entry (a clean end), scan, let it exit
//!     HELD: ADDR:LEN,… (hex address, decimal length) where the canary lay while alive:
//!     each must still be mapped, be read and read all zeros
//! lab-observer hand-out PID CANARY_FILE   `dazai get`: scan at its write to stdout (the control), then at exit_group
//! lab-observer deny PID SYSCALL           rewrite the next syscall to SYSCALL, report the death
//! lab-observer rewrite PID SYSCALL        rewrite the next syscall to SYSCALL, then let it go on
//! lab-observer pageout PID                page out PID's own private pages now (MADV_PAGEOUT)
//! lab-observer seccomp PID                Seccomp: of every thread
//! lab-observer syscall-nr SYSCALL         its number on this architecture
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lab_guest::procfs;
use lab_guest::tracer::{syscall_number, Entry, Traced};
use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match argv[..] {
        ["maps", pid] => maps(parse_pid(pid)),
        ["scan", pid, canary] => scan(parse_pid(pid), canary),
        ["wipe", pid, canary, ref held @ ..] => wipe(parse_pid(pid), canary, held, End::SelfKill),
        ["wipe-at-exit", pid, canary, ref held @ ..] => {
            wipe(parse_pid(pid), canary, held, End::ExitGroup)
        }
        ["hand-out", pid, canary] => hand_out(parse_pid(pid), canary),
        ["deny", pid, syscall] => deny(parse_pid(pid), syscall),
        ["rewrite", pid, syscall] => rewrite(parse_pid(pid), syscall),
        ["seccomp", pid] => seccomp(parse_pid(pid)),
        ["pageout", pid] => pageout(parse_pid(pid)),
        ["syscall-nr", syscall] => syscall_nr(syscall),
        _ => Err(anyhow::anyhow!(
            "usage: lab-observer maps|scan|wipe|deny|seccomp PID [CANARY_FILE|SYSCALL] | syscall-nr SYSCALL"
        )),
    };
    if let Err(error) = result {
        println!("{}", json!({ "error": format!("{error:#}") }));
        std::process::exit(1);
    }
}

fn parse_pid(text: &str) -> i32 {
    text.parse().unwrap_or(-1)
}

fn read_canary(path: &str) -> Result<Vec<u8>> {
    let canary = std::fs::read(path).with_context(|| format!("read canary {path}"))?;
    if canary.len() < 16 {
        bail!(
            "a canary of {} bytes is too short to be unique",
            canary.len()
        );
    }
    Ok(canary)
}

fn maps(pid: i32) -> Result<()> {
    let maps = procfs::mappings(pid).context("read smaps")?;
    println!("{}", json!({ "mappings": maps }));
    Ok(())
}

fn scan(pid: i32, canary: &str) -> Result<()> {
    let canary = read_canary(canary)?;
    let scan = procfs::scan_memory(pid, &canary).context("scan /proc/PID/mem")?;
    println!("{}", json!({ "scan": scan }));
    Ok(())
}

fn pageout(pid: i32) -> Result<()> {
    let advised = procfs::page_out(pid).context("process_madvise MADV_PAGEOUT")?;
    println!("{}", json!({ "advised_bytes": advised }));
    Ok(())
}

fn seccomp(pid: i32) -> Result<()> {
    let threads = procfs::seccomp_modes(pid)?;
    println!("{}", json!({ "threads": threads }));
    Ok(())
}

/// Stops the daemon at the entry of its own final `kill(self, SIGKILL)`,
/// after its wipe and before the kernel frees anything, and scans it.
/// The last system call of a daemon's end, where the scan is made.
#[derive(Clone, Copy)]
enum End {
    /// The panic's `kill(self, SIGKILL)`.
    SelfKill,
    /// A clean end's `exit_group`.
    ExitGroup,
}

/// `ADDR:LEN,…` (hex address, decimal length) into ranges.
fn parse_ranges(held: &[&str]) -> Result<Vec<(u64, usize)>> {
    held.iter()
        .flat_map(|list| list.split(','))
        .filter(|range| !range.is_empty())
        .map(|range| {
            let (address, length) = range.split_once(':').context("a range is ADDR:LEN")?;
            let address = u64::from_str_radix(address.trim_start_matches("0x"), 16)?;
            Ok((address, length.parse()?))
        })
        .collect()
}

/// Whether `[address, address + length)` overlaps `[start, start + len)`.
fn overlaps((address, length): (u64, usize), start: u64, len: u64) -> bool {
    address < start.saturating_add(len) && start < address + length as u64
}

/// Whether the syscall at `entry` is a `munmap` of any of `ranges`.
fn unmaps_any(entry: &Entry, ranges: &[(u64, usize)]) -> bool {
    entry.nr == libc::SYS_munmap as u64
        && ranges
            .iter()
            .any(|range| overlaps(*range, entry.args[0], entry.args[1]))
}

fn wipe(pid: i32, canary: &str, held: &[&str], at: End) -> Result<()> {
    let canary = read_canary(canary)?;
    let held = parse_ranges(held)?;
    let traced = Traced::seize(pid)?;
    traced.interrupt()?;
    println!("{}", json!({ "attached": pid }));
    let last_call = |nr: u64, args: &[u64; 6]| match at {
        End::SelfKill => {
            nr == libc::SYS_kill as u64 && args[0] as i32 == pid && args[1] == libc::SIGKILL as u64
        }
        End::ExitGroup => nr == libc::SYS_exit_group as u64,
    };
    // A range that held the secret may be unmapped before the end (a buffer
    // dropped): it is looked at again at the entry of that munmap, the last
    // moment it can be read; the rest at the last system call.
    let mut pending = held;
    let mut rechecked = Vec::new();
    let entry = loop {
        let entry = traced.run_to_entry(
            Duration::from_secs(30),
            || {},
            |e| last_call(e.nr, &e.args) || unmaps_any(e, &pending),
        )?;
        let entry = match entry {
            Ok(entry) => entry,
            Err(end) => bail!("the daemon ended before its last system call: {end}"),
        };
        if !last_call(entry.nr, &entry.args) {
            let (unmapped, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|range| overlaps(*range, entry.args[0], entry.args[1]));
            let mut seen = procfs::recheck(pid, &unmapped).context("look again before munmap")?;
            for range in &mut seen {
                range.at = "munmap".into();
            }
            rechecked.extend(seen);
            pending = rest;
            continue;
        }
        break entry;
    };
    let stopped_at = Instant::now();
    let scan = procfs::scan_memory(pid, &canary).context("scan at the last system call")?;
    let mut held = rechecked;
    held.extend(procfs::recheck(pid, &pending).context("look again where the canary lay")?);
    let scan_ms = stopped_at.elapsed().as_secs_f64() * 1000.0;
    let end = traced.continue_to_end()?;
    println!(
        "{}",
        json!({
            "held": held,
            "stopped_at": match at {
                End::SelfKill => format!("kill({}, {})", entry.args[0] as i32, entry.args[1]),
                End::ExitGroup => format!("exit_group({})", entry.args[0] as i32),
            },
            "scan": scan,
            "scan_ms": scan_ms,
            "end": end.to_string(),
        })
    );
    Ok(())
}

/// Follows a `dazai get` from its write of the secret to stdout, where the
/// scan must find it (the control: the scan sees this process), to its
/// `exit_group`, where no copy may be left.
fn hand_out(pid: i32, canary: &str) -> Result<()> {
    let canary = read_canary(canary)?;
    let traced = Traced::seize(pid)?;
    traced.interrupt()?;
    println!("{}", json!({ "attached": pid }));
    let patience = Duration::from_secs(30);
    let at_write = traced.run_to_entry(
        patience,
        || {},
        |e| e.nr == libc::SYS_write as u64 && e.args[0] == 1,
    )?;
    if let Err(end) = at_write {
        bail!("dazai get ended before it wrote to stdout: {end}");
    }
    let writing = procfs::scan_memory(pid, &canary).context("scan at the write")?;
    let at_exit = traced.run_to_entry(patience, || {}, |e| e.nr == libc::SYS_exit_group as u64)?;
    if let Err(end) = at_exit {
        bail!("dazai get ended before its exit_group: {end}");
    }
    let exiting = procfs::scan_memory(pid, &canary).context("scan at exit_group")?;
    let end = traced.continue_to_end()?;
    println!(
        "{}",
        json!({ "at_write": writing, "at_exit": exiting, "end": end.to_string() })
    );
    Ok(())
}

/// The host reads the VM's kernel log by number, and numbers differ by architecture.
/// Stops `pid` at its next syscall entry and rewrites it into `syscall`.
fn rewrite_next_syscall(pid: i32, syscall: &str) -> Result<(Traced, Entry, u64)> {
    let nr = syscall_number(syscall).with_context(|| format!("unknown syscall {syscall}"))?;
    let traced = Traced::seize(pid)?;
    traced.interrupt()?;
    // SIGCHLD is in the daemon's signalfd set: it wakes the loop, harmlessly.
    let wake = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGCHLD,
        );
    };
    let entry = match traced.run_to_entry(Duration::from_secs(10), wake, |_| true)? {
        Ok(entry) => entry,
        Err(end) => bail!("the daemon ended before a syscall entry: {end}"),
    };
    traced.rewrite_syscall(nr)?;
    Ok((traced, entry, nr))
}

/// Rewrites the next syscall into `syscall`, which the filter allows, and
/// lets the daemon go on: the control for `deny`.
fn rewrite(pid: i32, syscall: &str) -> Result<()> {
    let (traced, entry, nr) = rewrite_next_syscall(pid, syscall)?;
    traced.detach()?;
    println!(
        "{}",
        json!({ "rewrote": entry.nr, "into": syscall, "nr": nr, "detached": true })
    );
    Ok(())
}

fn syscall_nr(syscall: &str) -> Result<()> {
    let nr = syscall_number(syscall).with_context(|| format!("unknown syscall {syscall}"))?;
    println!("{}", json!({ "syscall": syscall, "nr": nr }));
    Ok(())
}

/// Rewrites the next syscall the daemon enters into `syscall`, which the
/// filter denies; Linux re-checks seccomp after the tracer's change.
fn deny(pid: i32, syscall: &str) -> Result<()> {
    let (traced, entry, nr) = rewrite_next_syscall(pid, syscall)?;
    let end = traced.continue_to_end()?;
    println!(
        "{}",
        json!({
            "rewrote": entry.nr,
            "into": syscall,
            "nr": nr,
            "end": end.to_string(),
            "signal": match end { lab_guest::tracer::End::Signaled(s) => s as i32, _ => 0 },
        })
    );
    Ok(())
}
