//! Project automation, run as `cargo xtask <verb>`: the build logic lives in
//! Rust, one module per verb, and `.ci/run` and the workflows only call it.

mod bench;
mod ci;
mod cross;
mod dist;
mod fuzz;
mod lab;
mod man;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xshell::Shell;

const USAGE: &str = "\
usage: cargo xtask <verb>

  ci    fmt, clippy, the whole suite with and without seccomp, docs,
        the fuzz targets for a bounded time and, last, the lab
        [--arch A --features F]  one cell of the workflow's matrix
                        (x86_64|aarch64, no-seccomp|seccomp; docs/release.md)
  man   write dazai(1) and a dazai-SUBCOMMAND(1) page each into $CARGO_TARGET_DIR/man (else target/man)
  fuzz  build the libFuzzer targets in fuzz/ and run them all at once
        [--time SECS]   seconds each target runs (default 60)
        [--only T,T]    only these targets (wire, mcp_request, tools_config)
  lab   attack the real binaries in containers and x86_64/aarch64 VMs and
        write the evidence report
        [--arch A,A]    only these architectures (x86_64, aarch64)
        [--update-docs] copy it into docs/threat-model.md
        [--only ROWS]   only these rows, e.g. --only wipe,session-loss
        [--verbose]     print every piece of evidence
  cross static release dazai for x86_64 and aarch64 musl with `cross`, in
        the toolchain image the lab builds -> target/built/<target>/dazai
  dist  the lab on both targets, then target/dist: only binaries whose
        SHA-256 every leg tested green, SHA256SUMS (signed with
        DAZAI_SIGNING_KEY if set), the evidence report, provenance.json
  bench measure destroy latency, ping-timeout precision, idle cost, load,
        size, and ssh-agent side by side -> target/bench/report.json
        [--runs N]      runs per destroy configuration (default 200)
        [--update-docs] copy the figures into docs/performance.md";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ci", ref rest @ ..] => ci::Cell::parse(rest).and_then(|cell| {
            shell_at_repo_root().and_then(|sh| match &cell {
                Some(cell) => ci::run_cell(&sh, cell),
                None => ci::run(&sh),
            })
        }),
        ["lab", ref rest @ ..] => lab::Options::parse(rest).and_then(|options| {
            shell_at_repo_root().and_then(|sh| lab::run(&sh, &options).map(drop))
        }),
        ["bench", ref rest @ ..] => bench::Options::parse(rest)
            .and_then(|options| shell_at_repo_root().and_then(|sh| bench::run(&sh, &options))),
        ["cross"] => shell_at_repo_root().and_then(|sh| cross::run(&sh)),
        ["dist"] => shell_at_repo_root().and_then(|sh| dist::run(&sh)),
        ["man"] => shell_at_repo_root().and_then(|sh| man::run(&sh)),
        ["fuzz", ref rest @ ..] => fuzz::Options::parse(rest)
            .and_then(|options| shell_at_repo_root().and_then(|sh| fuzz::run(&sh, &options))),
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A shell whose commands run in the workspace root, wherever `cargo xtask`
/// was started from.
fn shell_at_repo_root() -> anyhow::Result<Shell> {
    let sh = Shell::new()?;
    sh.change_dir(repo_root());
    Ok(sh)
}

fn repo_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}
