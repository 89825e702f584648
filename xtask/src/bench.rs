//! `cargo xtask bench`: measures what the product exists for, with the anchor,
//! `ssh-agent`, side by side in the same run (docs/performance.md says how and
//! what the figures mean). Numbers come from here, never from timed assertions
//! in tests.
//!
//! 1. build the shipped executables with `cross`, as `cargo xtask dist` does
//!    (their sizes, and each crate's share of their code by `cargo bloat`);
//!    the x86_64 `dazai` is the one measured;
//! 2. destroy latency with 0, 1, 10 and 100 registered processes, with an
//!    `--exec` tree of 11 and of 101 processes (and nothing registered with
//!    the daemon's stderr a full pipe nobody reads), and each daemon's
//!    start-up time on the way;
//! 3. ping-timeout precision;
//! 4. idle cost: context switches over 10 s, resident and locked memory;
//! 5. the heartbeat under a flood of 10 000 connection attempts;
//! 6. the anchor: how long `ssh-agent sleep 1000` outlives its command;
//! 7. a table on stdout, `target/bench/report.{json,md}`, and with
//!    `--update-docs` the figures copied into docs/performance.md.
//!
//! Every timestamp is taken outside the daemon: the bench holds a pidfd of the
//! client, of every registered process and of the daemon, and reads
//! `CLOCK_MONOTONIC` when `poll` reports each death — so no figure rests on
//! the daemon's own word.

mod anchor;
mod dazai;
mod destroy;
mod idle;
mod load;
mod ping_timeout;
mod process;
mod report;
mod size;
mod stats;

use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use dazai::{Dazai, Scratch};
use report::{Machine, Report};

/// `cargo xtask bench`: measure destroy latency, ping-timeout precision, idle
/// cost, load, size, and ssh-agent side by side -> target/bench/report.json.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Runs of each destroy configuration and of the anchor.
    #[arg(long, value_name = "N", default_value_t = 200, value_parser = above_zero)]
    pub runs: usize,
    /// Copy the figures into docs/performance.md.
    #[arg(long)]
    pub update_docs: bool,
}

fn above_zero(text: &str) -> Result<usize, String> {
    text.parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{text}: not a whole number above 0"))
}

/// Ping-timeout runs take a second each: fewer of them.
const PING_RUNS: usize = 50;

pub(crate) fn run(sh: &Shell, options: &Options) -> Result<()> {
    let started = Instant::now();
    step("build the shipped executables with cross (the x86_64 dazai is measured) and attribute their code by crate");
    let built = size::build(sh)?;
    let built_in = started.elapsed();
    let dazai = Dazai {
        bin: built.measured.clone(),
    };
    let scratch = Scratch::create()?;
    let date = cmd!(sh, "date -u +%Y-%m-%dT%H:%M:%SZ").quiet().read()?;
    let machine_at_start = Machine::now()?;
    let measuring = Instant::now();

    let (destroy, startup) = timed(
        &format!(
            "destroy latency: {} runs each of (victims, stderr) {:?}",
            options.runs,
            destroy::CONFIGURATIONS
        ),
        || destroy::measure(&dazai, &scratch, options.runs),
    )?;
    let ping_runs = PING_RUNS.min(options.runs);
    let ping = timed(
        &format!(
            "ping-timeout precision: {ping_runs} silent heartbeats, --ping-timeout {}",
            ping_timeout::TIMEOUT_SECS
        ),
        || ping_timeout::measure(&dazai, &scratch, ping_runs),
    )?;
    let idle = timed(
        &format!(
            "idle cost: {} s, with and without a ping timeout",
            idle::WINDOW.as_secs()
        ),
        || idle::measure(&dazai, &scratch),
    )?;
    let load = timed(
        &format!(
            "heartbeat under load: {} connection attempts from {} threads",
            load::ATTEMPTS,
            load::WORKERS
        ),
        || load::measure(&dazai, &scratch),
    )?;
    let anchor = timed(
        &format!(
            "the anchor: {} × ssh-agent sleep 1000, each command killed at a random moment",
            options.runs
        ),
        || anchor::measure(&scratch, options.runs),
    )?;

    let report = Report {
        date,
        machine_at_start,
        load_at_end: Machine::now()?.load,
        runs: options.runs,
        binaries: built.binaries,
        crate_sizes: built.crate_sizes,
        destroy,
        startup,
        ping,
        idle,
        load,
        anchor,
        measuring: measuring.elapsed(),
        building: built_in,
    };
    let out = sh.current_dir().join("target/bench");
    report.write(&out)?;
    println!("{}", report.markdown());
    if options.update_docs {
        step("copy the figures into docs/performance.md");
        report::update_docs(&sh.current_dir().join("docs/performance.md"), &report)?;
    }
    println!(
        "==> bench done in {:.0} s ({:.0} s building, {:.0} s measuring); report in target/bench/report.json",
        started.elapsed().as_secs_f64(),
        built_in.as_secs_f64(),
        report.measuring.as_secs_f64()
    );
    Ok(())
}

fn step(title: &str) {
    println!("==> bench: {title}");
}

/// Runs one measurement as a step, and says how long it took.
fn timed<T>(title: &str, measure: impl FnOnce() -> Result<T>) -> Result<T> {
    step(title);
    let started = Instant::now();
    let result = measure().with_context(|| format!("bench step `{title}`"))?;
    println!("    done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(result)
}
