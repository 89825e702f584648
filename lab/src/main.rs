//! `lab`: runs every scenario in every leg against the binaries of each
//! architecture and writes the evidence report. `cargo xtask lab` builds the
//! binaries, installs what is missing and calls this; run by hand:
//!
//! ```text
//! lab --bin-root target/lab --out target/lab [--arch x86_64,aarch64] [--kernel 6.1,5.10] [--only wipe,swap] [--run-id ID] [--verbose]
//! ```
//!
//! The legs: x86_64 containers on this machine's kernel, first and alone;
//! then the x86_64 and aarch64 VMs on Debian 12's 6.1 with and without
//! `secretmem.enable=1`, Debian 11's 5.10 and Debian 13's 6.12
//! (qemu-system, TCG; `--kernel` selects), each booted into its release's
//! root filesystem, two at a time. Each leg tests
//! `<bin-root>/<arch>/bin/dazai` and names its SHA-256.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lab::env::{Lab, Machines};
use lab::host::ForeignBinaries;
use lab::report::{Check, Leg, Outcome, Report};
use lab::runner::{human_ms, Recorder, Scenario};
use lab::vm::{Vm, VmKernel};
use lab::vm_assets::{DebianRelease, VmArch, VmAssets};

/// Runs every scenario in every leg and writes the evidence report.
#[derive(clap::Parser)]
#[command(name = "lab")]
struct Options {
    /// Where each architecture's binaries are, as `<DIR>/<arch>/bin`.
    #[arg(long, value_name = "DIR", default_value = "target/lab")]
    bin_root: PathBuf,
    /// Where the report (report.json, report.md) and the VM cache go.
    #[arg(long, value_name = "DIR", default_value = "target/lab")]
    out: PathBuf,
    /// The architectures whose legs run.
    #[arg(long, value_delimiter = ',', default_value = "x86_64,aarch64", value_parser = ["x86_64", "aarch64"])]
    arch: Vec<String>,
    /// The kernels of the VM legs: 6.1 (Debian 12, booted with
    /// secretmem.enable=1: memfd_secret), 5.10 (Debian 11, without it: the
    /// locked backend), 6.12 (Debian 13), 6.1-secretmem-off (Debian 12 as
    /// booted by default: the locked backend).
    #[arg(long, value_delimiter = ',', default_value = "6.1,5.10,6.1-secretmem-off,6.12", value_parser = ["6.1", "5.10", "6.12", "6.1-secretmem-off"])]
    kernel: Vec<String>,
    /// Only these rows, e.g. wipe,session-loss.
    #[arg(long, value_name = "ROWS", value_delimiter = ',', value_parser = row_name)]
    only: Option<Vec<String>>,
    /// Written into the report, so whoever started the run knows it is its own.
    #[arg(long, value_name = "ID", default_value = "")]
    run_id: String,
    /// Print every piece of evidence, not only a failing check's.
    #[arg(long)]
    verbose: bool,
}

/// What every leg's bin directory must hold.
const BINARIES: [&str; 5] = [
    "dazai",
    "dazai-mcp",
    "lab-probe",
    "lab-observer",
    "lab-init",
];

fn main() -> ExitCode {
    let options = <Options as clap::Parser>::parse();
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("lab: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// `asked` if it names a row, else an error listing the rows.
fn row_name(asked: &str) -> Result<String, String> {
    if lab::scenarios::ALL.iter().any(|s| names_row(asked, s.row)) {
        return Ok(asked.to_owned());
    }
    let rows: Vec<&str> = lab::scenarios::ALL.iter().map(|s| s.row).collect();
    Err(format!("no such row; the rows are: {}", rows.join(", ")))
}

/// The scenarios `--only` selects (all of them without it).
fn selected(options: &Options) -> impl Iterator<Item = &'static Scenario> + '_ {
    lab::scenarios::ALL.iter().filter(|scenario| {
        options
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|asked| names_row(asked, scenario.row)))
    })
}

/// Whether `asked` (`session-loss`, `session_loss`, `Session Loss`) names `row`.
fn names_row(asked: &str, row: &str) -> bool {
    asked.replace(['-', '_'], " ").eq_ignore_ascii_case(row)
}

fn vm_arch(arch: &str) -> Result<VmArch> {
    match arch {
        "x86_64" => Ok(VmArch::X86_64),
        "aarch64" => Ok(VmArch::Aarch64),
        other => bail!("unknown architecture {other}: x86_64 or aarch64"),
    }
}

fn run(options: &Options) -> Result<bool> {
    let started = Instant::now();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the lab runs as root (it starts containers and VMs, traces processes and sets core_pattern); run it with sudo");
    }
    std::fs::create_dir_all(&options.out)?;
    let work = scratch_dir()?;
    println!("lab: scratch directory {}", work.display());
    let mut legs = Vec::new();
    let mut checks = Vec::new();
    let mut images = Vec::new();
    let mut vm_legs = Vec::new();
    let host_dazai = host_dazai(options)?;
    for arch in &options.arch {
        let bin_dir = bin_dir(&options.bin_root, arch)?;
        if arch == std::env::consts::ARCH {
            images = lab::images::ensure(&work, &mut |line| println!("lab: {line}"))?;
            let leg_work = work.join("containers");
            std::fs::create_dir_all(&leg_work)?;
            let lab = Lab {
                machines: Machines::Containers {
                    image: lab::images::lab_image(),
                    ssh_dir: make_ssh_key(&leg_work)?,
                },
                bin_dir: bin_dir.clone(),
                host_dazai: host_dazai.clone(),
                work: leg_work,
                arch: arch.clone(),
                daemons_seen: Default::default(),
            };
            let (leg, leg_checks) = run_leg(&lab, options)?;
            legs.push(leg);
            checks.extend(leg_checks);
        }
        for kernel in VmKernel::ALL {
            if options.kernel.contains(&kernel.series()) {
                vm_legs.push((arch.clone(), kernel, bin_dir.clone()));
            }
        }
    }
    for (leg, leg_checks) in run_vm_legs(&vm_legs, &work, options)? {
        legs.push(leg);
        checks.extend(leg_checks);
    }
    let report = Report {
        run_id: options.run_id.clone(),
        legs,
        images,
        checks,
        total_ms: started.elapsed().as_millis() as u64,
    };
    write_report(&report, &options.out)?;
    print_summary(&report);
    let _ = std::fs::remove_dir_all(&work);
    Ok(report.is_green())
}

/// The `dazai` of this machine's architecture, which cargo xtask lab
/// always stages: a client on the host.
fn host_dazai(options: &Options) -> Result<PathBuf> {
    Ok(bin_dir(&options.bin_root, std::env::consts::ARCH)?.join("dazai"))
}

/// `<bin-root>/<arch>/bin`, checked to hold every binary a leg needs.
fn bin_dir(bin_root: &Path, arch: &str) -> Result<PathBuf> {
    let dir = bin_root.join(arch).join("bin");
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{} (build it with cargo xtask lab)", dir.display()))?;
    for binary in BINARIES {
        if !dir.join(binary).is_file() {
            bail!("{binary} is missing from {}", dir.display());
        }
    }
    Ok(dir)
}

/// How many VM legs run at once. A TCG guest spends much of its leg
/// waiting (on its agent, on a negative control's 20 s), so two of them
/// share the lab machines' 2 cores without slowing each other much.
const VM_LEGS_AT_ONCE: usize = 2;

/// Runs the VM legs `(arch, release, bin_dir)`, [`VM_LEGS_AT_ONCE`] at a
/// time, and returns their results in the order given. Their kernels and
/// modules are fetched first, one leg after another: they share one cache.
fn run_vm_legs(
    legs: &[(String, VmKernel, PathBuf)],
    work: &Path,
    options: &Options,
) -> Result<Vec<(Leg, Vec<Check>)>> {
    let mut assets: Vec<Option<Result<VmAssets>>> =
        fetch_assets(legs, &options.out.join("vm-cache"))?
            .into_iter()
            .map(Some)
            .collect();
    let mut results = Vec::new();
    for (batch, first) in legs
        .chunks(VM_LEGS_AT_ONCE)
        .zip((0..).step_by(VM_LEGS_AT_ONCE))
    {
        let batch_results = std::thread::scope(|scope| {
            let running: Vec<_> = batch
                .iter()
                .zip(&mut assets[first..])
                .map(|((arch, kernel, bin_dir), assets)| {
                    let assets = assets.take().expect("each leg's assets are taken once");
                    scope.spawn(move || run_vm_leg(arch, *kernel, assets, bin_dir, work, options))
                })
                .collect();
            running
                .into_iter()
                .map(|leg| {
                    leg.join()
                        .unwrap_or_else(|_| bail!("a VM leg's thread panicked"))
                })
                .collect::<Vec<_>>()
        });
        for result in batch_results {
            results.push(result?);
        }
    }
    Ok(results)
}

/// How many VM asset fetches run at once. Building an aarch64 root
/// filesystem runs its maintainer scripts under qemu-user, minutes of one core.
const FETCHES_AT_ONCE: usize = 2;

/// The assets of each leg of `legs`, fetched once per architecture and
/// release, [`FETCHES_AT_ONCE`] at a time, the foreign architecture's first
/// (the slowest); meanwhile its binaries run through qemu-user
/// ([`ForeignBinaries`]), for the maintainer scripts of its root filesystem.
fn fetch_assets(
    legs: &[(String, VmKernel, PathBuf)],
    cache: &Path,
) -> Result<Vec<Result<VmAssets>>> {
    let mut wanted: Vec<(VmArch, DebianRelease)> = Vec::new();
    for (arch, kernel, _) in legs {
        let key = (vm_arch(arch)?, kernel.release);
        if !wanted.contains(&key) {
            wanted.push(key);
        }
    }
    let is_foreign = |arch: &VmArch| arch.rust_arch() != std::env::consts::ARCH;
    wanted.sort_by_key(|(arch, _)| !is_foreign(arch));
    let _foreign = match wanted.iter().find(|(arch, _)| is_foreign(arch)) {
        Some((arch, _)) => Some(ForeignBinaries::runnable(arch.rust_arch())?),
        None => None,
    };
    let queue = Mutex::new(wanted.into_iter());
    let fetched = Mutex::new(HashMap::new());
    std::thread::scope(|scope| {
        for _ in 0..FETCHES_AT_ONCE {
            scope.spawn(|| loop {
                let next = queue.lock().expect("queue lock").next();
                let Some((arch, release)) = next else {
                    return;
                };
                let assets = lab::vm_assets::fetch(arch, release, cache, &mut |line| {
                    println!("lab: {line}")
                });
                // anyhow's error is not Clone; two legs may share a fetch.
                let assets = assets.map_err(|error| format!("{error:#}"));
                fetched
                    .lock()
                    .expect("fetched lock")
                    .insert((arch, release), assets);
            });
        }
    });
    let fetched = fetched.into_inner().expect("fetched lock");
    Ok(legs
        .iter()
        .map(|(arch, kernel, _)| {
            let key = (vm_arch(arch)?, kernel.release);
            match fetched.get(&key) {
                Some(Ok(assets)) => Ok(assets.clone()),
                Some(Err(error)) => Err(anyhow::anyhow!("{error}")),
                None => bail!("no fetch of the {arch} assets ran"),
            }
        })
        .collect())
}

/// Boots the VM of `arch` from `assets` and runs the rows that need no
/// container in it; a VM that does not boot is a red row of its leg, never
/// a skip.
fn run_vm_leg(
    arch: &str,
    kernel: VmKernel,
    assets: Result<VmAssets>,
    bin_dir: &Path,
    work: &Path,
    options: &Options,
) -> Result<(Leg, Vec<Check>)> {
    let started = Instant::now();
    let leg_work = work.join(format!("vm-{arch}-{}", kernel.series()));
    std::fs::create_dir_all(&leg_work)?;
    let booted = assets.and_then(|assets| {
        println!(
            "lab: booting {} with {}",
            assets.arch.qemu_system(),
            assets.kernel_package
        );
        let ssh_dir = make_ssh_key(&leg_work)?;
        let boot = || {
            Vm::boot(
                kernel,
                &assets,
                &bin_dir.join("lab-init"),
                bin_dir,
                &leg_work,
                &ssh_dir,
            )
        };
        // A TCG guest has been seen to die once right after its firmware
        // (docs/lab.md): a second boot tells that apart from a kernel that
        // never comes up, which stays a red leg.
        boot().or_else(|first| {
            println!(
                "lab: {} did not boot ({first:#}); booting it once more",
                kernel.leg(arch)
            );
            boot()
        })
    });
    let lab = match booted {
        Ok(vm) => {
            println!(
                "lab: {} up in {} on kernel {} ({}); its clock set from the host's within {} ms",
                kernel.leg(arch),
                human_ms(started.elapsed().as_millis() as u64),
                vm.kernel,
                vm.kernel_package,
                vm.clock_uncertainty_ms()
            );
            Lab {
                machines: Machines::Vm(Arc::new(vm)),
                bin_dir: bin_dir.to_path_buf(),
                host_dazai: host_dazai(options)?,
                work: leg_work,
                arch: arch.to_owned(),
                daemons_seen: Default::default(),
            }
        }
        Err(error) => {
            let name = kernel.leg(arch);
            let mut rec = Recorder::new("VM", &name, options.verbose);
            rec.row_failed(&format!("the {name} boots"), &error);
            let leg = leg_of(&name, arch, "did not boot", bin_dir, Vec::new(), started)?;
            return Ok((leg, rec.checks));
        }
    };
    run_leg(&lab, options)
}

/// Every selected scenario of the leg, in the order of the threat model.
fn run_leg(lab: &Lab, options: &Options) -> Result<(Leg, Vec<Check>)> {
    let started = Instant::now();
    let name = lab.leg();
    println!("lab: leg {name}: kernel {}", lab.kernel());
    let mut checks = Vec::new();
    for scenario in selected(options) {
        let mut rec = Recorder::new(scenario.row, &name, options.verbose);
        if let Err(error) = (scenario.run)(lab, &mut rec) {
            rec.row_failed(&format!("the {} scenario runs", scenario.row), &error);
        }
        checks.extend(rec.checks);
    }
    let kernel = match &lab.machines {
        Machines::Vm(vm) => format!("{} ({})", vm.kernel, vm.kernel_package),
        Machines::Containers { .. } => lab.kernel(),
    };
    let daemons_seen = lab
        .daemons_seen
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let leg = leg_of(
        &name,
        &lab.arch,
        &kernel,
        &lab.bin_dir,
        daemons_seen,
        started,
    )?;
    if !leg.ran_what_it_names() {
        println!(
            "lab: RED {name}: the daemons ran {:?}, not the leg's dazai {}",
            leg.daemons_seen, leg.dazai_sha256
        );
    }
    Ok((leg, checks))
}

fn leg_of(
    name: &str,
    arch: &str,
    kernel: &str,
    bin_dir: &Path,
    daemons_seen: Vec<String>,
    started: Instant,
) -> Result<Leg> {
    let dazai = bin_dir.join("dazai");
    let mut tools_sha256 = std::collections::BTreeMap::new();
    for tool in ["dazai-mcp", "lab-probe", "lab-observer", "lab-init"] {
        let path = bin_dir.join(tool);
        if path.exists() {
            tools_sha256.insert(tool.to_owned(), lab::images::sha256_file(&path)?);
        }
    }
    Ok(Leg {
        daemons_seen,
        tools_sha256,
        name: name.to_owned(),
        arch: arch.to_owned(),
        kernel: kernel.to_owned(),
        dazai_sha256: lab::images::sha256_file(&dazai)?,
        dazai_path: dazai.display().to_string(),
        took_ms: started.elapsed().as_millis() as u64,
    })
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
    for leg in &report.legs {
        println!("lab: leg {}: dazai sha256 {}", leg.name, leg.dazai_sha256);
    }
    for image in &report.images {
        println!(
            "lab: image {} {} in {}",
            image.image,
            if image.cached { "cached" } else { "built" },
            human_ms(image.took_ms)
        );
    }
    for (leg, row) in report.rows_without_a_control() {
        println!(
            "lab: RED {leg} {row}: no negative control ran, so nothing shows this row can fail"
        );
    }
    for check in report.checks.iter().filter(|c| c.outcome == Outcome::Fail) {
        println!("lab: FAIL {} {}: {}", check.leg, check.row, check.scenario);
    }
}
