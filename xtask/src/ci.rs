//! `cargo xtask ci`: everything CI checks, in the order CI checks it.
//!
//! Each step is announced on one line (`==> <command>`), timed, and stops the
//! run on failure with an error naming it. The times are there for the
//! 40-minute CI budget.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Cmd, Shell};

/// `cargo xtask ci`: fmt, clippy, the whole suite with and without seccomp,
/// docs, the fuzz targets for a bounded time and, last, the lab; or, with
/// `--arch` and `--features`, one cell of the workflow's matrix (docs/release.md).
#[derive(clap::Args)]
pub(crate) struct Options {
    /// The matrix cell's architecture.
    #[arg(long, value_parser = ["x86_64", "aarch64"], requires = "features")]
    arch: Option<String>,
    /// The matrix cell's features.
    #[arg(long, value_parser = ["no-seccomp", "seccomp"], requires = "arch")]
    features: Option<String>,
}

impl Options {
    /// The matrix cell asked for, if one was.
    pub(crate) fn cell(&self) -> Option<Cell> {
        Some(Cell {
            arch: self.arch.clone()?,
            seccomp: self.features.as_deref()? == "seccomp",
        })
    }
}

/// One cell of the workflow's matrix (`cargo xtask ci --arch A --features F`).
pub(crate) struct Cell {
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// Whether the cell builds `dazai` with its default features (the
    /// seccomp filter), rather than `--no-default-features`.
    pub seccomp: bool,
}

/// The matrix cell's part of [`run`]: fmt and clippy for the cell's target
/// and features; on x86_64 the suite, natively; the seccomp cells run the
/// lab's legs of their architecture, whose VM runs the daemon's suite on a
/// real kernel of that architecture (aarch64 tests never run under qemu-user);
/// the aarch64 no-seccomp cell links the `--no-default-features` binary with cross.
pub(crate) fn run_cell(sh: &Shell, cell: &Cell) -> Result<()> {
    let mut steps = Steps::new();
    steps.run("ensure prerequisites", || ensure_prerequisites(sh))?;
    steps.command(cmd!(sh, "cargo fmt --all --check"))?;
    let features: &[&str] = if cell.seccomp {
        &[]
    } else {
        &["--no-default-features"]
    };
    if cell.arch == "x86_64" {
        steps.command(cmd!(
            sh,
            "cargo clippy --workspace --all-targets {features...} -- -D warnings"
        ))?;
        steps.command(cmd!(sh, "cargo build --workspace --bins {features...}"))?;
        steps.command(cmd!(
            sh,
            "cargo nextest run --workspace --exclude lab --profile ci {features...}"
        ))?;
    } else {
        // The host-only crates (the lab's driver, xtask) are not built for aarch64.
        steps.command(cmd!(sh, "rustup target add aarch64-unknown-linux-musl"))?;
        steps.command(cmd!(
            sh,
            "cargo clippy --workspace --exclude lab --exclude xtask --all-targets --target aarch64-unknown-linux-musl {features...} -- -D warnings"
        ))?;
        if !cell.seccomp {
            steps.run(
                "cross build -p dazai (aarch64, --no-default-features)",
                || {
                    crate::cross::prepare(sh)?;
                    crate::cross::build_executables(
                        sh,
                        "aarch64-unknown-linux-musl",
                        &["build", "--release", "-p", "dazai", "--no-default-features"],
                    )
                    .map(drop)
                },
            )?;
        }
    }
    if cell.seccomp {
        let arch = cell.arch.clone();
        steps.run(&format!("cargo xtask lab --arch {arch}"), || {
            crate::lab::run(
                sh,
                &crate::lab::Options {
                    arch: Some(arch.clone()),
                    ..crate::lab::Options::default()
                },
            )
            .map(drop)
        })?;
    }
    steps.print_summary();
    Ok(())
}

pub(crate) fn run(sh: &Shell) -> Result<()> {
    let mut steps = Steps::new();
    steps.run("ensure prerequisites", || ensure_prerequisites(sh))?;
    steps.command(cmd!(sh, "cargo fmt --all --check"))?;
    steps.command(cmd!(
        sh,
        "cargo clippy --workspace --all-targets --no-default-features -- -D warnings"
    ))?;
    steps.command(cmd!(
        sh,
        "cargo clippy --workspace --all-targets -- -D warnings"
    ))?;
    // The end-to-end tests (tests/) run the `dazai` binary itself, which no
    // test target depends on: build it first, with the same features. The
    // `ci` profile (.config/nextest.toml) reports every failure and bounds a
    // hung test instead of stopping at the first.
    steps.command(cmd!(
        sh,
        "cargo build --workspace --bins --no-default-features"
    ))?;
    // The lab's own tests need root, docker and the lab image: the lab step runs them.
    steps.command(cmd!(
        sh,
        "cargo nextest run --workspace --exclude lab --profile ci --no-default-features"
    ))?;
    // Every daemon test again, this time against the live seccomp filter
    // (the default build).
    steps.command(cmd!(sh, "cargo build --workspace --bins"))?;
    steps.command(cmd!(
        sh,
        "cargo nextest run --workspace --exclude lab --profile ci"
    ))?;
    // The Python reference (daemon/python): its own tests, then the shared
    // end-to-end tests with it as the daemon (docs/protocol.md).
    let python = steps.run_with(
        &format!("python3 -m venv {PYTHON_VENV}; pip install pytest"),
        || python_venv(sh),
    )?;
    steps.run("pytest daemon/python/tests", || {
        let _in_the_package = sh.push_dir("daemon/python");
        Ok(cmd!(sh, "{python} -m pytest -q -p no:cacheprovider tests")
            .quiet()
            .run()?)
    })?;
    let reference_run = conformance_filter();
    steps.command(
        cmd!(
            sh,
            "cargo nextest run -p dazai-e2e --profile ci -E {reference_run}"
        )
        .env("DAZAI_E2E_DAEMON", "python")
        .env("DAZAI_E2E_PYTHON", &python),
    )?;
    steps.run(
        "RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps",
        || {
            let doc =
                cmd!(sh, "cargo doc --workspace --no-deps").env("RUSTDOCFLAGS", "-D warnings");
            Ok(doc.quiet().run()?)
        },
    )?;
    // The libFuzzer targets (fuzz/), all at once for 60 s each: under 4 min
    // with their build from scratch (docs/robustness.md). A crash fails CI;
    // the input is left in fuzz/artifacts/.
    steps.run("cargo xtask fuzz --time 60", || {
        crate::fuzz::run(
            sh,
            &crate::fuzz::Options {
                time: 60,
                only: Vec::new(),
            },
        )
    })?;
    // Last: the lab attacks the shipped binaries in containers and in x86_64
    // and aarch64 VMs (docs/lab.md), on the kernels that fit the budget.
    steps.run(&format!("cargo xtask lab --kernel {CI_KERNELS}"), || {
        let options = crate::lab::Options {
            kernel: Some(CI_KERNELS.to_owned()),
            ..crate::lab::Options::default()
        };
        crate::lab::run(sh, &options).map(drop)
    })?;
    steps.print_summary();
    Ok(())
}

/// The VM legs CI runs: Debian 12's 6.1 and Debian 11's 5.10, on both
/// architectures. With all nine legs a run was on course for about 45
/// minutes, and with these and 6.12's it took 40 min 29 s, over the 40 it is
/// kept within; and on aarch64 6.12 the systemd unit row's user manager did
/// not come up in 3 of 5 runs beside another leg (docs/lab.md).
/// `cargo xtask lab` runs all nine legs, and `--update-docs` needs them.
const CI_KERNELS: &str = "6.1,5.10";

/// The Python reference's virtual environment, under the target directory.
const PYTHON_VENV: &str = "target/python-venv";

/// The end-to-end test binaries that run again with the Python reference as
/// the daemon.
const CONFORMANCE_BINARIES: [&str; 5] = [
    "protocol",
    "lifecycle",
    "session",
    "capability",
    "reference",
];

/// The shared tests about what the reference lacks, each with the test of
/// tests/tests/reference.rs that shows the difference by name instead.
const RUST_ONLY: [(&str, &str); 1] = [(
    "root_reads_the_secret_from_a_locked_daemon_but_gets_eio_from_a_secretmem_daemon",
    "the_reference_has_no_secretmem_and_refuses_it_with_the_reason",
)];

/// The nextest filter of the reference's run: the conformance binaries but
/// the Rust-only tests.
fn conformance_filter() -> String {
    let binaries: Vec<String> = CONFORMANCE_BINARIES
        .iter()
        .map(|binary| format!("binary({binary})"))
        .collect();
    let rust_only: String = RUST_ONLY
        .iter()
        .map(|(test, _)| format!(" - test(={test})"))
        .collect();
    format!("({}){rust_only}", binaries.join(" | "))
}

/// Makes the venv (with Debian's python3, which an unprivileged user may run:
/// the reference's tests act as `nobody`) and installs pytest into it once;
/// returns the venv's interpreter.
fn python_venv(sh: &Shell) -> Result<String> {
    let venv = sh.current_dir().join(PYTHON_VENV);
    let python = venv.join("bin/python3");
    if !python.exists() {
        let system = if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        cmd!(sh, "{system} -m venv {venv}").quiet().run()?;
    }
    if !succeeds(cmd!(sh, "{python} -c 'import pytest'")) {
        println!("    installing pytest into {PYTHON_VENV} (the reference's test runner)");
        cmd!(sh, "{python} -m pip install --quiet pytest")
            .quiet()
            .run()?;
    }
    Ok(python.display().to_string())
}

/// The rustup components the steps call, with the reason each is needed.
const COMPONENTS: [(&str, &str, &str); 2] = [
    ("rustfmt", "fmt", "for cargo fmt --check"),
    ("clippy", "clippy", "for cargo clippy"),
];

/// The Debian packages the tests call, with the reason each is needed.
const DEBIAN_PACKAGES: [(&str, &str); 5] = [
    ("binutils", "nm and objdump: tests inspect the dazai binary"),
    (
        "python3",
        "tests speak the protocol and the capability from a second language; the Python reference runs on it",
    ),
    (
        "python3-venv",
        "the Python reference's tests run in a venv under target/",
    ),
    (
        "systemd",
        "systemd-analyze: a test verifies the user unit in docs/usage.md",
    ),
    (
        "openssh-client",
        "ssh-keygen: a test signs and verifies a release's SHA256SUMS",
    ),
];

/// Installs what the steps need on a fresh Debian 12 machine when run as root;
/// as any other user, names what is missing and how to install it.
fn ensure_prerequisites(sh: &Shell) -> Result<()> {
    let mut missing: Vec<Install> = Vec::new();
    for (component, subcommand, reason) in COMPONENTS {
        if !succeeds(cmd!(sh, "cargo {subcommand} --version")) {
            missing.push(Install::Component { component, reason });
        }
    }
    if !succeeds(cmd!(sh, "cargo nextest --version")) {
        missing.push(Install::Nextest);
    }
    if succeeds(cmd!(sh, "dpkg --version")) {
        let packages: Vec<_> = DEBIAN_PACKAGES
            .into_iter()
            .filter(|(package, _)| !succeeds(cmd!(sh, "dpkg -s {package}")))
            .collect();
        if !packages.is_empty() {
            missing.push(Install::Debian(packages));
        }
    } else {
        let needed: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(_, why)| *why).collect();
        println!(
            "    not Debian: not checking packages; the tests need {}",
            needed.join("; ")
        );
    }

    if missing.is_empty() {
        let packages: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
        println!(
            "    present: rustfmt, clippy, cargo-nextest, {}",
            packages.join(", ")
        );
        return Ok(());
    }
    if cmd!(sh, "id -u").quiet().read()? != "0" {
        let how: Vec<String> = missing.iter().map(Install::command).collect();
        bail!(
            "missing prerequisites; install them, or run as root to have them installed: {}",
            how.join("; ")
        );
    }
    for install in &missing {
        install.run(sh)?;
    }
    Ok(())
}

/// One thing `ensure_prerequisites` found missing.
enum Install {
    Component {
        component: &'static str,
        reason: &'static str,
    },
    Nextest,
    Debian(Vec<(&'static str, &'static str)>),
}

impl Install {
    /// The command a user runs to install it.
    fn command(&self) -> String {
        match self {
            // Run in the repository, rustup adds it to the toolchain that
            // rust-toolchain.toml pins.
            Install::Component { component, .. } => format!("rustup component add {component}"),
            Install::Nextest => "cargo install cargo-nextest --locked".to_string(),
            Install::Debian(packages) => {
                let names: Vec<&str> = packages.iter().map(|(name, _)| *name).collect();
                format!("apt-get install {}", names.join(" "))
            }
        }
    }

    fn run(&self, sh: &Shell) -> Result<()> {
        match self {
            Install::Component { component, reason } => {
                println!("installing {component} ({reason})");
                cmd!(sh, "rustup component add {component}").run()?;
            }
            Install::Nextest => {
                println!("installing cargo-nextest (the runner of the test suite)");
                cmd!(sh, "cargo install cargo-nextest --locked").run()?;
            }
            Install::Debian(packages) => crate::apt::install(sh, packages)?,
        }
        Ok(())
    }
}

fn succeeds(cmd: Cmd<'_>) -> bool {
    cmd.quiet().ignore_stdout().ignore_stderr().run().is_ok()
}

/// The steps run so far and how long each took.
struct Steps {
    started: Instant,
    done: Vec<(String, Duration)>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            started: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Runs a command as a step titled by the command line itself.
    fn command(&mut self, cmd: Cmd<'_>) -> Result<()> {
        let title = cmd.to_string();
        self.run(&title, || Ok(cmd.quiet().run()?))
    }

    fn run(&mut self, title: &str, step: impl FnOnce() -> Result<()>) -> Result<()> {
        self.run_with(title, step)
    }

    /// [`Steps::run`] for a step that yields what later steps use.
    fn run_with<T>(&mut self, title: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
        println!("==> {title}");
        let started = Instant::now();
        let result = step();
        let took = started.elapsed();
        let value = result.with_context(|| {
            format!(
                "step `{title}` failed after {} (total {})",
                human(took),
                human(self.started.elapsed())
            )
        })?;
        println!("    ok in {}", human(took));
        self.done.push((title.to_string(), took));
        Ok(value)
    }

    fn print_summary(&self) {
        println!("==> all steps passed");
        for (title, took) in &self.done {
            println!("    {:>8}  {title}", human(*took));
        }
        println!("    {:>8}  total", human(self.started.elapsed()));
    }
}

fn human(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        format!(
            "{}m{:02}s",
            duration.as_secs() / 60,
            duration.as_secs() % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Rust-only test renamed or removed would silently run nowhere, and
    /// its stand-in must exist to show the difference.
    #[test]
    fn every_rust_only_test_and_its_stand_in_exist() {
        let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tests");
        let sources: String = CONFORMANCE_BINARIES
            .iter()
            .map(|binary| std::fs::read_to_string(tests.join(format!("{binary}.rs"))).unwrap())
            .collect();
        for (test, stand_in) in RUST_ONLY {
            for name in [test, stand_in] {
                assert!(sources.contains(&format!("fn {name}()")), "no test {name}");
            }
        }
    }
}
