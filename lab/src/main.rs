//! `lab`: runs every scenario against the binaries in `--bin-dir` and writes
//! the evidence report. `cargo xtask lab` builds the binaries, installs what
//! is missing and calls this; run by hand:
//!
//! ```text
//! lab --bin-dir target/lab/bin --out target/lab [--only wipe,swap] [--verbose]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lab::env::Lab;
use lab::report::{Outcome, Report};
use lab::runner::{human_ms, Recorder};

struct Options {
    bin_dir: PathBuf,
    out: PathBuf,
    only: Option<Vec<String>>,
    verbose: bool,
}

fn main() -> ExitCode {
    match parse().and_then(|options| run(&options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("lab: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn parse() -> Result<Options> {
    let mut options = Options {
        bin_dir: PathBuf::from("target/lab/bin"),
        out: PathBuf::from("target/lab"),
        only: None,
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bin-dir" => options.bin_dir = args.next().context("--bin-dir DIR")?.into(),
            "--out" => options.out = args.next().context("--out DIR")?.into(),
            "--only" => {
                let rows = args.next().context("--only ROW,ROW")?;
                options.only = Some(rows.split(',').map(str::to_owned).collect());
            }
            "--verbose" => options.verbose = true,
            other => bail!(
                "unknown argument {other}; usage: lab --bin-dir DIR --out DIR [--only ROWS] [--verbose]"
            ),
        }
    }
    Ok(options)
}

fn run(options: &Options) -> Result<bool> {
    let started = Instant::now();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the lab runs as root (it starts containers, traces processes and sets core_pattern); run it with sudo");
    }
    let bin_dir = options.bin_dir.canonicalize().with_context(|| {
        format!(
            "{} (build it with cargo xtask lab)",
            options.bin_dir.display()
        )
    })?;
    for binary in ["dazai", "lab-probe", "lab-observer"] {
        if !bin_dir.join(binary).is_file() {
            bail!("{} is missing from {}", binary, bin_dir.display());
        }
    }
    let dazai = bin_dir.join("dazai");
    let dazai_sha256 = lab::images::sha256_file(&dazai)?;
    std::fs::create_dir_all(&options.out)?;
    let work = scratch_dir()?;
    println!("lab: dazai {} (sha256 {})", dazai.display(), dazai_sha256);
    println!("lab: scratch directory {}", work.display());

    let images = lab::images::ensure(&work, &mut |line| println!("lab: {line}"))?;
    let ssh_dir = make_ssh_key(&work)?;
    let lab = Lab {
        image: lab::images::lab_image(),
        bin_dir,
        work: work.clone(),
        ssh_dir,
        arch: std::env::consts::ARCH.to_owned(),
    };

    let mut checks = Vec::new();
    for scenario in lab::scenarios::ALL {
        if let Some(only) = &options.only {
            if !only.iter().any(|row| {
                row.replace(['-', '_'], " ")
                    .eq_ignore_ascii_case(scenario.row)
            }) {
                continue;
            }
        }
        let mut rec = Recorder::new(scenario.row, &lab.arch, options.verbose);
        if let Err(error) = (scenario.run)(&lab, &mut rec) {
            rec.row_failed(&format!("the {} scenario runs", scenario.row), &error);
        }
        checks.extend(rec.checks);
    }

    let report = Report {
        dazai_sha256,
        dazai_path: dazai.display().to_string(),
        kernel: uname_r(),
        images,
        checks,
        total_ms: started.elapsed().as_millis() as u64,
    };
    write_report(&report, &options.out)?;
    print_summary(&report);
    let _ = std::fs::remove_dir_all(&work);
    Ok(report.is_green())
}

/// A fresh host directory for this run (bind mounts, keys, cores).
fn scratch_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ningen-lab-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A key pair for `lab@container`, and the `authorized_keys` sshd reads.
fn make_ssh_key(work: &Path) -> Result<PathBuf> {
    let dir = work.join("ssh");
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ningen-lab", "-f"])
        .arg(&key)
        .output()
        .context("ssh-keygen (install openssh-client)")?;
    if !out.status.success() {
        bail!("ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys"))?;
    for name in ["authorized_keys", "id_ed25519.pub"] {
        std::fs::set_permissions(
            dir.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
    }
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(dir)
}

fn uname_r() -> String {
    Command::new("uname")
        .arg("-r")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn write_report(report: &Report, out: &Path) -> Result<()> {
    let json = out.join("report.json");
    let markdown = out.join("report.md");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    std::fs::write(&markdown, report.markdown())?;
    println!("lab: wrote {} and {}", json.display(), markdown.display());
    Ok(())
}

fn print_summary(report: &Report) {
    let count = |outcome| {
        report
            .checks
            .iter()
            .filter(|c| c.outcome == outcome)
            .count()
    };
    println!(
        "lab: {} checks: {} pass, {} limit shown, {} FAIL; total {}",
        report.checks.len(),
        count(Outcome::Pass),
        count(Outcome::Limit),
        count(Outcome::Fail),
        human_ms(report.total_ms)
    );
    for image in &report.images {
        println!(
            "lab: image {} {} in {}",
            image.image,
            if image.cached { "cached" } else { "built" },
            human_ms(image.took_ms)
        );
    }
    for check in report.checks.iter().filter(|c| c.outcome == Outcome::Fail) {
        println!("lab: FAIL {}: {}", check.row, check.scenario);
    }
}
