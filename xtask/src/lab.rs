//! `cargo xtask lab`: attack the real `dazai` binaries in containers and VMs
//! and write the evidence report (docs/lab.md says what each leg and
//! scenario shows).
//!
//! In order, each step announced on one line:
//! 1. prerequisites: on Debian as root, install what is missing (docker.io,
//!    mmdebstrap, openssh-client, qemu-user-static, qemu-system from
//!    bookworm-backports, …);
//!    otherwise name it and stop — a missing prerequisite is a failure, never a skip;
//! 2. `dockerd`: start it if it is not running (and stop it again at the end);
//! 3. for each architecture, build with `cross` the shipped `dazai` (static
//!    musl, release, `--features seccomp`: `target/built/<target>/dazai`), the
//!    lab's guest programs and the daemon's integration tests, staged in
//!    `target/lab/<arch>/bin`;
//! 4. run every leg (`lab`: x86_64 containers, then per architecture VMs on 6.1 with and without secretmem.enable=1, on 5.10 and on 6.12, every row in each) →
//!    `target/lab/report.{json,md}`;
//! 5. the lab's own tests (the report's shape and its rules: a row without a negative control is red);
//! 6. with `--update-docs`, copy the evidence into docs/threat-model.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// `cargo xtask lab`: attack the real binaries in containers and x86_64/aarch64
/// VMs and write the evidence report.
#[derive(Default, clap::Args)]
pub(crate) struct Options {
    /// Only these architectures, e.g. x86_64,aarch64 (x86_64: containers and VM; aarch64: VM).
    #[arg(long, value_name = "ARCHES")]
    pub arch: Option<String>,
    /// Copy the evidence table into docs/threat-model.md (refused with --only or --arch).
    #[arg(long)]
    pub update_docs: bool,
    /// Only these kernels in the VM legs, e.g. 5.10 (6.1: Debian 12; 5.10: Debian 11; 6.12: Debian 13; 6.1-secretmem-off: Debian 12 without secretmem.enable=1).
    #[arg(long, value_name = "SERIES")]
    pub kernel: Option<String>,
    /// Only these rows, comma-separated, e.g. wipe,session-loss (for working on one scenario).
    #[arg(long, value_name = "ROWS")]
    pub only: Option<String>,
    /// Print every piece of evidence, not only a failing check's.
    #[arg(long)]
    pub verbose: bool,
}

/// The Debian packages the lab calls, with the reason each is needed.
const DEBIAN_PACKAGES: [(&str, &str, &str); 9] = [
    (
        "docker.io",
        "dockerd",
        "the containers every scenario runs in",
    ),
    (
        "mmdebstrap",
        "mmdebstrap",
        "the base root filesystem (no registry)",
    ),
    (
        "openssh-client",
        "ssh",
        "real SSH sessions into the containers",
    ),
    (
        "util-linux",
        "swapon",
        "the swapfile of the swap scenario; dmesg",
    ),
    (
        "xz-utils",
        "xz",
        "unpacking Debian 11's and 12's amd64 kernels, and Debian 13's modules",
    ),
    ("zstd", "zstd", "unpacking Debian 13's amd64 kernel"),
    (
        "qemu-user-static",
        "qemu-aarch64-static",
        "running the arm64 packages' maintainer scripts while building the aarch64 VMs' root filesystems (never a test)",
    ),
    (
        "arch-test",
        "arch-test",
        "mmdebstrap's check that arm64 binaries run before it builds a tree of them",
    ),
    (
        "e2fsprogs",
        "mkfs.ext4",
        "the ext4 images of the VMs' root filesystems",
    ),
];

/// qemu-system for the VM legs, from bookworm-backports: the machine's
/// qemu-utils come from there and bookworm's qemu-system conflicts with them.
const QEMU_PACKAGES: [(&str, &str); 2] = [
    ("qemu-system-arm", "qemu-system-aarch64"),
    ("qemu-system-x86", "qemu-system-x86_64"),
];

/// The apt source added for [`QEMU_PACKAGES`] and removed again right after.
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/ningen-lab-backports.sources";

/// The integration tests that run inside the VMs: those that need nothing
/// beside the binary but the VM's Debian, so that `dazai run` with real
/// programs, the capability rule, the faults and the switch that cannot
/// stall are evidenced on each architecture's seccomp allowlist and each
/// kernel (the others read the source tree: snapshots, docs, the
/// reference's Python sources; all run on this machine in `cargo xtask ci`).
const VM_TEST_SUITES: [&str; 7] = [
    "capability",
    "confinement",
    "faults",
    "lifecycle",
    "run",
    "session",
    "stall",
];

/// Runs the lab; returns the id written into its `target/lab/report.json`,
/// checked there after the run, so a caller reads its own run's report.
pub(crate) fn run(sh: &Shell, options: &Options) -> Result<String> {
    let started = Instant::now();
    if options.update_docs
        && (options.only.is_some() || options.arch.is_some() || options.kernel.is_some())
    {
        bail!("--update-docs copies the evidence of a full run (every row on every leg) into docs/threat-model.md; drop --only, --arch and --kernel");
    }
    let _one_lab_at_a_time = lock_lab_dir(&sh.current_dir().join("target/lab"))?;
    step("prerequisites");
    ensure_prerequisites(sh)?;
    step("dockerd");
    let _dockerd = Dockerd::ensure_running(&sh.current_dir())?;

    step("cross, its rustup targets and its toolchain image");
    crate::cross::prepare(sh)?;
    let target = sh.current_dir().join("target");
    let arches: Vec<&str> = match &options.arch {
        Some(list) => list.split(',').collect(),
        None => vec!["x86_64", "aarch64"],
    };
    for arch in &arches {
        step(&format!("build with cross for {arch}: the shipped dazai, the guest programs, the daemon's tests"));
        stage_binaries(sh, arch, &target.join("lab").join(arch).join("bin"))?;
    }
    let host = std::env::consts::ARCH;
    if !arches.contains(&host) {
        step(&format!("build with cross for {host}: its dazai is the host's client of the forwarded heartbeat"));
        stage_binaries(sh, host, &target.join("lab").join(host).join("bin"))?;
    }
    cmd!(sh, "cargo build -p lab --bin lab").run()?;

    step("run the legs");
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let mut lab = Command::new(target.join("debug/lab"));
    lab.args(["--run-id", &run_id])
        .arg("--bin-root")
        .arg(target.join("lab"))
        .arg("--out")
        .arg(target.join("lab"))
        .args(["--arch", &arches.join(",")]);
    if let Some(kernel) = &options.kernel {
        lab.args(["--kernel", kernel]);
    }
    if let Some(only) = &options.only {
        lab.args(["--only", only]);
    }
    if options.verbose {
        lab.arg("--verbose");
    }
    let scenarios = lab
        .current_dir(sh.current_dir())
        .status()
        .context("run the lab")?;

    step("the lab's own tests (the report's shape and rules)");
    let tests = cmd!(sh, "cargo test -p lab").run();

    if !scenarios.success() {
        bail!("the lab found a red row (see above and target/lab/report.md)");
    }
    let written = std::fs::read_to_string(target.join("lab/report.json"))
        .context("read target/lab/report.json")?;
    let written: serde_json::Value = serde_json::from_str(&written)?;
    if written["run_id"] != run_id.as_str() {
        bail!(
            "target/lab/report.json is not this run's (run id {run_id}, the file says {})",
            written["run_id"]
        );
    }
    tests.context("the lab's own tests failed")?;
    if options.update_docs {
        step("copy the evidence into docs/threat-model.md");
        update_docs(&sh.current_dir(), &target.join("lab/report.json"))?;
    }
    println!(
        "==> lab green in {:.1} s; report in target/lab/report.md",
        started.elapsed().as_secs_f64()
    );
    Ok(run_id)
}

/// Holds `target/lab/.lock` for the whole run: two labs at once would share
/// its binaries and report, the host's `core_pattern` and its swap.
fn lock_lab_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(".lock");
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        anyhow::anyhow!(
            "another `cargo xtask lab` holds {} ({errno}); one lab runs at a time (they would share target/lab, core_pattern and swap)",
            path.display()
        )
    })
}

/// Builds one architecture's binaries with cross and copies them into
/// `bin_dir`: `dazai` and `dazai-mcp` (the very files `cargo xtask dist`
/// ships), `lab-probe`,
/// `lab-observer`, `lab-init` and the tests as `e2e-<suite>`.
fn stage_binaries(sh: &Shell, arch: &str, bin_dir: &Path) -> Result<()> {
    let target = crate::cross::TARGETS
        .iter()
        .find(|t| t.starts_with(arch))
        .with_context(|| format!("no shipped target for {arch}"))?;
    let _ = std::fs::remove_dir_all(bin_dir);
    std::fs::create_dir_all(bin_dir)?;
    let shipped = crate::cross::build_shipped(sh, target)?;
    for built in &shipped {
        std::fs::copy(&built.path, bin_dir.join(&built.name))
            .with_context(|| format!("stage {} in {}", built.name, bin_dir.display()))?;
    }
    let guests =
        crate::cross::build_executables(sh, target, &["build", "--release", "-p", "lab-guest"])?;
    let mut tests_args = vec!["test", "--no-run", "-p", "dazai-e2e"];
    for suite in VM_TEST_SUITES {
        tests_args.extend_from_slice(&["--test", suite]);
    }
    let tests = crate::cross::build_executables(sh, target, &tests_args)?;
    for (name, path) in guests {
        std::fs::copy(&path, bin_dir.join(&name))
            .with_context(|| format!("stage {name} in {}", bin_dir.display()))?;
    }
    for (name, path) in tests {
        std::fs::copy(&path, bin_dir.join(format!("e2e-{name}")))
            .with_context(|| format!("stage the {name} tests in {}", bin_dir.display()))?;
    }
    stage_reference(sh, bin_dir)?;
    for built in &shipped {
        println!("    {arch}: {} sha256 {}", built.name, built.sha256);
    }
    Ok(())
}

/// Copies the Python reference's package (`daemon/python/dazai_ref`) into
/// `bin_dir/python`, where the "reference" row's containers find it.
fn stage_reference(sh: &Shell, bin_dir: &Path) -> Result<()> {
    let package = sh.current_dir().join("daemon/python/dazai_ref");
    let staged = bin_dir.join("python/dazai_ref");
    std::fs::create_dir_all(&staged)?;
    for entry in
        std::fs::read_dir(&package).with_context(|| format!("read {}", package.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "py") {
            let name = path.file_name().context("a file name")?;
            std::fs::copy(&path, staged.join(name))
                .with_context(|| format!("stage {}", path.display()))?;
        }
    }
    Ok(())
}

fn step(title: &str) {
    println!("==> lab: {title}");
}

/// Installs what is missing on Debian as root; otherwise lists it and fails.
fn ensure_prerequisites(sh: &Shell) -> Result<()> {
    let missing: Vec<_> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, command, _)| !on_path(command))
        .collect();
    let qemu_missing = QEMU_PACKAGES.iter().any(|(_, command)| !on_path(command));
    if missing.is_empty() && !qemu_missing {
        println!(
            "    present: docker.io, mmdebstrap, openssh-client, util-linux, xz-utils, zstd, qemu-user-static, arch-test, e2fsprogs, qemu-system"
        );
        return Ok(());
    }
    let mut names: Vec<&str> = missing.iter().map(|(package, _, _)| *package).collect();
    if qemu_missing {
        names.extend(QEMU_PACKAGES.iter().map(|(package, _)| *package));
    }
    let is_root = cmd!(sh, "id -u").quiet().read()? == "0";
    let is_debian = Path::new("/etc/debian_version").exists();
    if !is_root || !is_debian {
        let why: Vec<String> = missing
            .iter()
            .map(|(package, _, reason)| format!("{package} ({reason})"))
            .collect();
        bail!(
            "the lab needs: {}. {}",
            why.join(", "),
            if is_debian {
                format!(
                    "Run as root to have them installed, or: sudo apt-get install {}",
                    names.join(" ")
                )
            } else {
                "This is not Debian: install the equivalent packages (Docker Engine, mmdebstrap, an OpenSSH client, util-linux) and run again as root".to_owned()
            }
        );
    }
    if !missing.is_empty() {
        let packages: Vec<(&str, &str)> = missing
            .iter()
            .map(|(package, _, reason)| (*package, *reason))
            .collect();
        crate::apt::install(sh, &packages)?;
    }
    if qemu_missing {
        install_qemu_from_backports(sh)?;
    }
    Ok(())
}

/// Adds bookworm-backports for one install and removes it again, so apt's
/// sources end as they were.
fn install_qemu_from_backports(sh: &Shell) -> Result<()> {
    println!("    installing qemu-system-arm, qemu-system-x86 from bookworm-backports (the VM legs); the apt source is removed afterwards");
    std::fs::write(
        BACKPORTS_SOURCE,
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )?;
    let packages: Vec<&str> = QEMU_PACKAGES.iter().map(|(package, _)| *package).collect();
    let installed = cmd!(sh, "apt-get update -qq").run().and_then(|()| {
        cmd!(
            sh,
            "apt-get install -y -qq --no-install-recommends -t bookworm-backports {packages...}"
        )
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()
    });
    let _ = std::fs::remove_file(BACKPORTS_SOURCE);
    let restored = cmd!(sh, "apt-get update -qq").run();
    installed.context("install qemu-system from bookworm-backports")?;
    restored.context("apt-get update after removing bookworm-backports")?;
    Ok(())
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|dir| dir.join(command).is_file())
    })
}

/// A `dockerd` this run started, stopped again when dropped.
pub(crate) struct Dockerd {
    child: Option<Child>,
}

impl Dockerd {
    pub(crate) fn ensure_running(root: &Path) -> Result<Dockerd> {
        if docker_answers() {
            println!("    dockerd is running");
            return Ok(Dockerd { child: None });
        }
        let log_path = root.join("target/lab/dockerd.log");
        std::fs::create_dir_all(log_path.parent().unwrap_or(root))?;
        println!(
            "    starting dockerd (log: {}); it is stopped again at the end",
            log_path.display()
        );
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new("dockerd")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start dockerd")?;
        let dockerd = Dockerd { child: Some(child) };
        let started = Instant::now();
        while !docker_answers() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "dockerd did not answer within 60 s; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(dockerd)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            println!("==> stopping the dockerd this run started");
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

fn docker_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Markers around the generated part of docs/threat-model.md.
const BEGIN: &str = "<!-- lab evidence: generated by `cargo xtask lab --update-docs` -->";
const END: &str = "<!-- end of lab evidence -->";

/// Rewrites the status column of each row from the report and replaces the
/// evidence section between the markers with the report's table.
fn update_docs(root: &Path, report: &Path) -> Result<()> {
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report).context("read target/lab/report.json")?,
    )?;
    let markdown = std::fs::read_to_string(root.join("target/lab/report.md"))?;
    let doc_path = root.join("docs/threat-model.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    for line in doc.lines() {
        out.push_str(&status_line(line, &checks));
        out.push('\n');
    }
    let section = format!("{BEGIN}\n## Evidence\n\n{markdown}{END}\n");
    let out = match (out.find(BEGIN), out.find(END)) {
        (Some(start), Some(end)) => format!(
            "{}{section}{}",
            &out[..start],
            &out[end + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{out}\n{section}"),
    };
    std::fs::write(&doc_path, out)?;
    println!("    updated {}", doc_path.display());
    Ok(())
}

/// A table row `| row | … | status |` with its status from the checks,
/// leg by leg.
fn status_line(line: &str, checks: &[serde_json::Value]) -> String {
    let cells: Vec<&str> = line.split(" | ").collect();
    let Some(row) = line
        .strip_prefix("| ")
        .and_then(|rest| rest.split(" | ").next())
    else {
        return line.to_owned();
    };
    let mine: Vec<&serde_json::Value> = checks.iter().filter(|c| c["row"] == row).collect();
    if mine.is_empty() || cells.len() < 4 {
        return line.to_owned();
    }
    let mut legs: Vec<&str> = Vec::new();
    for check in &mine {
        let leg = check["leg"].as_str().unwrap_or_default();
        if !legs.contains(&leg) {
            legs.push(leg);
        }
    }
    let statuses: Vec<String> = legs
        .iter()
        .map(|leg| {
            let of_leg: Vec<_> = mine.iter().filter(|c| c["leg"] == *leg).collect();
            let count = |outcome: &str| of_leg.iter().filter(|c| c["outcome"] == outcome).count();
            match (count("fail"), count("limit")) {
                (0, 0) => format!("{leg}: {} pass", of_leg.len()),
                (0, limits) => format!(
                    "{leg}: {} pass, {limits} limit shown",
                    of_leg.len() - limits
                ),
                (fails, _) => format!("{leg}: {fails} of {} FAIL", of_leg.len()),
            }
        })
        .collect();
    let mut cells = cells;
    let last = cells.len() - 1;
    let status = format!("{} |", statuses.join("; "));
    cells[last] = &status;
    cells.join(" | ")
}
