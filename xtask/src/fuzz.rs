//! `cargo xtask fuzz`: builds the libFuzzer targets in `fuzz/` and runs every
//! one of them at once for a bounded time, then reports executions and
//! crashes; any crash fails the run.
//!
//! The targets are ordinary cargo-fuzz targets (`cargo fuzz run wire` works
//! where cargo-fuzz is installed), but this verb does not need cargo-fuzz: it
//! passes `cargo build` the coverage flags `cargo fuzz build --sanitizer none`
//! passes (cargo-fuzz 0.13, `src/project.rs`). Every one of them is a stable
//! `-C` flag, so the pinned stable toolchain builds the targets as it is; a
//! sanitizer (`-Zsanitizer`) would need nightly, and the code under test is
//! safe Rust, where libFuzzer's own checks (panics, overflow checks, time
//! and memory limits) are the ones that find bugs. See docs/robustness.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// The targets, as named in `fuzz/Cargo.toml`, each with what it fuzzes.
pub(crate) const TARGETS: [(&str, &str); 3] = [
    (
        "wire",
        "the wire-protocol decoder: request lines and reply lines",
    ),
    (
        "mcp_request",
        "dazai mcp's request parser: JSON-RPC lines and tools/call arguments",
    ),
    ("tools_config", "dazai mcp's tools-config parser"),
];

/// What `cargo fuzz build --sanitizer none --debug-assertions
/// --codegen-units 16` puts in RUSTFLAGS on Linux. 16 codegen units halve the
/// build (the CI step's budget) for a small loss of speed per execution.
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing \
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0 \
    -Cllvm-args=-sanitizer-coverage-stack-depth \
    -Cdebug-assertions \
    -Ccodegen-units=16";

/// Where libFuzzer leaves an input that crashed, hung or ran out of memory.
const FINDING_PREFIXES: [&str; 4] = ["crash-", "timeout-", "oom-", "leak-"];

/// `cargo xtask fuzz`: build the libFuzzer targets in fuzz/ and run them all at once.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Seconds each target runs.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub time: u64,
    /// Only these targets (all when none is named).
    #[arg(long, value_name = "TARGET,TARGET", value_delimiter = ',', value_parser = target_name)]
    pub only: Vec<String>,
}

/// A name of [`TARGETS`], or an error listing them.
fn target_name(name: &str) -> Result<String, String> {
    if TARGETS.iter().any(|(target, _)| *target == name) {
        return Ok(name.to_owned());
    }
    let known: Vec<&str> = TARGETS.iter().map(|(target, _)| *target).collect();
    Err(format!(
        "no fuzz target {name}; the targets are {}",
        known.join(", ")
    ))
}

impl Options {
    fn targets(&self) -> Vec<&'static str> {
        TARGETS
            .iter()
            .map(|(target, _)| *target)
            .filter(|target| self.only.is_empty() || self.only.iter().any(|o| o == target))
            .collect()
    }
}

/// One target's run.
struct Outcome {
    target: &'static str,
    execs: u64,
    secs: f64,
    findings: Vec<PathBuf>,
    exit_ok: bool,
    log: PathBuf,
}

pub(crate) fn run(sh: &Shell, options: &Options) -> Result<()> {
    ensure_cxx_compiler(sh)?;
    let binaries = build(sh)?;
    let targets = options.targets();
    println!(
        "fuzzing {} for {}s each, all at once: {}",
        targets.join(", "),
        options.time,
        TARGETS
            .iter()
            .filter(|(t, _)| targets.contains(t))
            .map(|(t, what)| format!("{t} = {what}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let root = sh.current_dir();
    let outcomes: Vec<Result<Outcome>> = std::thread::scope(|scope| {
        let runs: Vec<_> = targets
            .iter()
            .map(|&target| {
                let (root, binaries) = (&root, &binaries);
                scope.spawn(move || fuzz_one(root, binaries, target, options.time))
            })
            .collect();
        runs.into_iter()
            .map(|run| {
                run.join()
                    .unwrap_or_else(|_| bail!("a fuzz runner thread panicked"))
            })
            .collect()
    });
    let outcomes = outcomes.into_iter().collect::<Result<Vec<_>>>()?;
    report(&outcomes)
}

/// libfuzzer-sys compiles libFuzzer itself (C++).
fn ensure_cxx_compiler(sh: &Shell) -> Result<()> {
    let present = cmd!(sh, "c++ --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok();
    if present {
        return Ok(());
    }
    let root = cmd!(sh, "id -u").quiet().read()? == "0";
    let debian = cmd!(sh, "dpkg --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_ok();
    if !(root && debian) {
        bail!("no C++ compiler (c++): libfuzzer-sys compiles libFuzzer; install one, e.g. `apt-get install g++`");
    }
    crate::apt::install(
        sh,
        &[("g++", "libfuzzer-sys compiles libFuzzer, which is C++")],
    )
}

/// Builds every target with the coverage instrumentation; returns the directory of the binaries.
fn build(sh: &Shell) -> Result<PathBuf> {
    let host = cmd!(sh, "rustc -vV")
        .quiet()
        .read()?
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host triple")?;
    // Users' own RUSTFLAGS come last, as cargo-fuzz appends them.
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(own) if !own.is_empty() => format!("{COVERAGE_FLAGS} {own}"),
        _ => COVERAGE_FLAGS.to_owned(),
    };
    // `--target` keeps the flags off build scripts and proc macros, as cargo-fuzz does.
    let line_tables = "profile.release.debug=\"line-tables-only\"";
    let build = cmd!(
        sh,
        "cargo build --release --manifest-path fuzz/Cargo.toml --target {host} --target-dir fuzz/target --bins --config {line_tables}"
    )
    .env("RUSTFLAGS", rustflags);
    println!("building the fuzz targets: {build}");
    let started = Instant::now();
    build.quiet().run().context("building the fuzz targets")?;
    println!("    built in {:.0}s", started.elapsed().as_secs_f64());
    Ok(sh
        .current_dir()
        .join("fuzz/target")
        .join(host)
        .join("release"))
}

/// Runs one target for `time` seconds: new inputs go to a scratch corpus
/// (the committed seeds under fuzz/corpus/ are only read), findings to
/// fuzz/artifacts/TARGET/.
fn fuzz_one(root: &Path, binaries: &Path, target: &'static str, time: u64) -> Result<Outcome> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let binary = binaries.join(target);
    let scratch = root.join("fuzz/target/corpus").join(target);
    let seeds = root.join("fuzz/corpus").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    let logs = root.join("fuzz/target/logs");
    for dir in [&scratch, &artifacts, &logs] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    let before = findings_in(&artifacts)?;
    let max_total_time = format!("-max_total_time={time}");
    let artifact_prefix = format!("-artifact_prefix={}/", artifacts.display());
    let started = Instant::now();
    let output = cmd!(
        sh,
        "{binary} {max_total_time} -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 {artifact_prefix} {scratch} {seeds}"
    )
    .quiet()
    .ignore_status()
    .output()
    .with_context(|| format!("running {}", binary.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
    let execs = text
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let findings = findings_in(&artifacts)?
        .into_iter()
        .filter(|path| !before.contains(path))
        .collect();
    Ok(Outcome {
        target,
        execs,
        secs,
        findings,
        exit_ok: output.status.success(),
        log,
    })
}

fn findings_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if FINDING_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            found.push(path);
        }
    }
    Ok(found)
}

fn report(outcomes: &[Outcome]) -> Result<()> {
    let mut failed = Vec::new();
    for outcome in outcomes {
        let rate = outcome.execs as f64 / outcome.secs.max(0.001);
        println!(
            "    {:<13} {:>12} execs in {:>5.0}s  {:>9.0} execs/s  {} crashes",
            outcome.target,
            outcome.execs,
            outcome.secs,
            rate,
            outcome.findings.len()
        );
        if !outcome.exit_ok || !outcome.findings.is_empty() || outcome.execs == 0 {
            failed.push(outcome);
        }
    }
    let total: u64 = outcomes.iter().map(|o| o.execs).sum();
    println!("    total         {total:>12} execs");
    if failed.is_empty() {
        return Ok(());
    }
    for outcome in &failed {
        eprintln!(
            "fuzz target {} failed; its log: {}",
            outcome.target,
            outcome.log.display()
        );
        for finding in &outcome.findings {
            eprintln!(
                "    input: {}; reproduce: fuzz/target/*/release/{} {}",
                finding.display(),
                outcome.target,
                finding.display()
            );
        }
    }
    let names: Vec<&str> = failed.iter().map(|o| o.target).collect();
    bail!(
        "fuzzing found a crash (or could not run) in {}",
        names.join(", ")
    )
}
