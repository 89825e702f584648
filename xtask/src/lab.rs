//! `cargo xtask lab`: attack the real `dazai` binary in containers and write
//! the evidence report (docs/lab.md says what each scenario shows).
//!
//! In order, each step announced on one line:
//! 1. prerequisites: on Debian as root, install what is missing (docker.io,
//!    mmdebstrap, openssh-client); otherwise name it and stop — a missing
//!    prerequisite is a failure, never a skip;
//! 2. `dockerd`: start it if it is not running (and stop it again at the end);
//! 3. build the shipped `dazai` (release, `--features seccomp`) and the lab's
//!    probes and observer, staged in `target/lab/bin`;
//! 4. run every scenario (`lab`: images built or taken from the cache by
//!    input hash; host settings restored by guards) → `target/lab/report.{json,md}`;
//! 5. the lab's own tests, among them the proof that it can fail;
//! 6. with `--update-docs`, copy the evidence into docs/threat-model.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// `cargo xtask lab [--update-docs] [--only ROWS] [--verbose]`.
#[derive(Default)]
pub(crate) struct Options {
    /// Copy the evidence table into docs/threat-model.md.
    pub update_docs: bool,
    /// Only these rows (comma-separated), for working on one scenario.
    pub only: Option<String>,
    /// Print every piece of evidence, not only a failing check's.
    pub verbose: bool,
}

impl Options {
    pub(crate) fn parse(args: &[&str]) -> Result<Options> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match *arg {
                "--update-docs" => options.update_docs = true,
                "--verbose" => options.verbose = true,
                "--only" => options.only = Some(args.next().context("--only ROW,ROW")?.to_string()),
                other => bail!("unknown lab option {other}; usage: cargo xtask lab [--update-docs] [--only ROWS] [--verbose]"),
            }
        }
        Ok(options)
    }
}

/// The Debian packages the lab calls, with the reason each is needed.
const DEBIAN_PACKAGES: [(&str, &str, &str); 4] = [
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
];

pub(crate) fn run(sh: &Shell, options: &Options) -> Result<()> {
    let started = Instant::now();
    step("prerequisites");
    ensure_prerequisites(sh)?;
    step("dockerd");
    let _dockerd = Dockerd::ensure_running(&sh.current_dir())?;

    step("build the shipped dazai (release, --features seccomp) and the lab's helpers");
    cmd!(sh, "cargo build --release -p dazai --features seccomp").run()?;
    cmd!(sh, "cargo build -p lab --bins").run()?;
    let target = sh.current_dir().join("target");
    let bin_dir = target.join("lab/bin");
    std::fs::create_dir_all(&bin_dir)?;
    for (from, name) in [
        ("release/dazai", "dazai"),
        ("debug/lab-probe", "lab-probe"),
        ("debug/lab-observer", "lab-observer"),
    ] {
        std::fs::copy(target.join(from), bin_dir.join(name))
            .with_context(|| format!("stage {name} in {}", bin_dir.display()))?;
    }

    step("run the scenarios");
    let mut lab = Command::new(target.join("debug/lab"));
    lab.arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(target.join("lab"));
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

    step("the lab's own tests (it can fail; the report's shape)");
    let tests = cmd!(sh, "cargo test -p lab")
        .env("LAB_BIN_DIR", &bin_dir)
        .run();

    if !scenarios.success() {
        bail!("the lab found a red row (see above and target/lab/report.md)");
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
    if missing.is_empty() {
        println!("    present: docker.io, mmdebstrap, openssh-client, util-linux");
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(package, _, _)| *package).collect();
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
    for (package, _, reason) in &missing {
        println!("    installing {package} ({reason})");
    }
    cmd!(sh, "apt-get update -qq").run()?;
    cmd!(
        sh,
        "apt-get install -y -qq --no-install-recommends {names...}"
    )
    .env("DEBIAN_FRONTEND", "noninteractive")
    .run()?;
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
struct Dockerd {
    child: Option<Child>,
}

impl Dockerd {
    fn ensure_running(root: &Path) -> Result<Dockerd> {
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
            println!("==> lab: stopping the dockerd this run started");
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
    let section = format!("{BEGIN}\n## Evidence (x86_64)\n\n{markdown}{END}\n");
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

/// A table row `| row | … | status |` with its status from the checks.
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
    let count = |outcome: &str| mine.iter().filter(|c| c["outcome"] == outcome).count();
    let status = match (count("fail"), count("limit")) {
        (0, 0) => format!("x86_64: {} checks pass", mine.len()),
        (0, limits) => format!("x86_64: {} pass, {limits} limit shown", mine.len() - limits),
        (fails, _) => format!("x86_64: {fails} of {} FAIL", mine.len()),
    };
    let mut cells = cells;
    let last = cells.len() - 1;
    let status = format!("{status}; aarch64: not yet |");
    cells[last] = &status;
    cells.join(" | ")
}
