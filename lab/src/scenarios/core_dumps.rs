//! Row **core dumps** — "the secret never lands in a core dump" (its "what is
//! claimed" in docs/threat-model.md).
//!
//! The scenario: no core, and no secret in a forced core: daemon: `Seccomp`,
//! `/proc/PID/coredump_filter`, VmFlags `dd`; SIGSEGV/SIGABRT sent to the
//! daemon → no core file (non-dumpable); a probe that uses the same
//! `SecretBuffer` but stays dumpable crashes → a core IS written and the
//! canary is NOT in it, while a heap canary IS (control).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::env::{fresh_canary, Env, Lab, PATIENCE, RUN};
use crate::host::Sysctl;
use crate::runner::{Recorder, Verdict};
use lab_guest::procfs::{find_all, status_field, Mapping, Traces};

/// Cores land here inside the container (the pattern is resolved in the
/// crashing process's mount namespace), i.e. in the run directory on the host.
const PATTERN: &str = "/lab/run/cores/core.%e.%p";

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let env = lab
        .env("core-dumps")
        .cap_add("SYS_PTRACE")
        .core_dumps()
        .start()?;
    // The pattern is restored when this function returns, however it returns.
    let (cores, _pattern) = cores_in_run_dir(&env)?;

    for signal in ["SEGV", "ABRT"] {
        rec.check(
            &format!("the daemon killed by SIG{signal} leaves no core"),
            |v| daemon_leaves_no_core(&env, &cores, signal, v),
        );
    }

    rec.check(
        "a dumpable SecretBuffer probe's core holds the heap canary but not the secret",
        |v| dumpable_probe(&env, &cores, &[], v),
    );
    rec.control(
        "the same probe keeping its secret in memory a core includes, as a buffer without MADV_DONTDUMP would (`--secret-on-heap`)",
        "traces of the SecretBuffer canary in the core",
        |v| dumpable_probe(&env, &cores, &["--secret-on-heap"], v),
    );
    Ok(())
}

/// The daemon, with its secret in a `dd` mapping, sent `SIG{signal}` by its
/// own user: it ends by its last resort's SIGKILL and leaves no core, right
/// after a dumpable crash in the same place did leave one.
fn daemon_leaves_no_core(env: &Env, cores: &Path, signal: &str, v: &mut Verdict) -> Result<()> {
    // The control first, in this check: a dumpable process that
    // crashes now does leave a core, so "no core" below is news.
    dumpable_probe(env, cores, &[], v)?;
    let daemon = env.daemon().named(&format!("sig{signal}")).start()?;
    let pid = daemon.pid_arg();
    let status = env
        .exec("root", &["cat", &format!("/proc/{pid}/status")])?
        .stdout;
    let filter = env
        .exec("root", &["cat", &format!("/proc/{pid}/coredump_filter")])?
        .stdout;
    v.note(format!(
        "Seccomp: {}, coredump_filter {}",
        status_field(&status, "Seccomp").unwrap_or_default(),
        filter.trim()
    ));
    let maps: Vec<Mapping> =
        serde_json::from_value(env.observe(&["maps", &pid])?["mappings"].clone())?;
    let secret: Vec<&Mapping> = maps.iter().filter(|m| m.is_secret_shaped()).collect();
    if secret.is_empty() {
        for mapping in maps.iter().filter(|m| m.has_flag("dd")) {
            v.note(format!("a dd mapping: {}", mapping.describe()));
        }
    }
    v.require(
        !secret.is_empty(),
        format!(
            "the secret mapping carries VmFlags dd: {}",
            secret
                .iter()
                .map(|m| m.describe())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    );
    let before = core_files(cores);
    env.exec("lab", &["kill", &format!("-{signal}"), &pid])?;
    // A fatal signal is the daemon's last resort: it wipes, kills
    // its tree and ends by SIGKILL, as the panic does.
    let ending = daemon.process.wait_end(PATIENCE)?;
    v.require(
        ending.signal() == Some(9),
        format!(
            "the daemon ended: {} (SIGKILL: the last resort)",
            ending.how
        ),
    );
    let log = daemon.log();
    v.require(
        log.contains("PANIC: fatal error in the daemon itself"),
        format!("its log: {}", log.lines().last().unwrap_or_default()),
    );
    // The kernel writes a core before the exit is reported; give it a moment anyway.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = core_files(cores);
    v.require(
        after == before,
        format!(
            "core files in {PATTERN}: {} before, {} after",
            before, after
        ),
    );
    v.figure("no core");
    Ok(())
}

/// Points `core_pattern` into the run directory's `cores` (the guard puts
/// the host's pattern back); returns the directory on the host.
pub fn cores_in_run_dir(env: &Env) -> Result<(PathBuf, Option<Sysctl>)> {
    let cores = env.run_dir.join("cores");
    fs::create_dir_all(&cores)?;
    fs::set_permissions(&cores, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let pattern = env.set_kernel_setting("/proc/sys/kernel/core_pattern", PATTERN)?;
    Ok((cores, pattern))
}

/// `lab-probe dumpable-crash` (with `flags`, which the row's negative
/// control uses to break it) crashes; its core must hold the heap canary and no trace of
/// the secret.
pub fn dumpable_probe(env: &Env, cores: &Path, flags: &[&str], v: &mut Verdict) -> Result<()> {
    let secret = fresh_canary();
    let heap = fresh_canary();
    let secret_file = env.put("probe-secret.canary", &secret)?;
    let heap_file = env.put("probe-heap.canary", &heap)?;
    let before = core_files(cores);
    let probe = env.launch(
        "lab",
        "dumpable-probe",
        None,
        &[
            &[
                "/lab/bin/lab-probe",
                "dumpable-crash",
                &secret_file,
                &heap_file,
            ],
            flags,
        ]
        .concat(),
    )?;
    let ending = probe.wait_end(PATIENCE)?;
    // The probe must have held the whole secret, or "not in the core" says nothing.
    let said = probe.out();
    v.require(
        said.contains(&format!("holding {} secret bytes", secret.len())),
        format!(
            "the probe held all {} secret bytes before the crash: {}",
            secret.len(),
            said.trim()
        ),
    );
    v.require(
        ending.signal() == Some(6),
        format!("the probe ended: {}", ending.how),
    );
    let core = crate::env::wait_for("the probe's core file", PATIENCE, || {
        fs::read_dir(cores)
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .contains(&format!(".{}", probe.pid))
            })
            .map(|e| e.path())
    });
    let Ok(core) = core else {
        v.require(
            false,
            format!("a core file in {RUN}/cores ({} before)", before),
        );
        return Ok(());
    };
    // The core may still be being written when it appears.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let bytes = fs::read(&core).with_context(|| format!("read {}", core.display()))?;
    v.require(
        !bytes.is_empty(),
        format!(
            "core written: {} ({} KiB)",
            core.display(),
            bytes.len() / 1024
        ),
    );
    // The control must find the heap canary whole; the secret must leave no
    // trace at all, not even a piece or an encoded form.
    let heap_hits = find_all(&bytes, &heap).len();
    let secret_hits = Traces::of(&secret).find(&bytes).len();
    v.require(
        heap_hits > 0,
        format!("heap canary in the core: {heap_hits} time(s) (control)"),
    );
    v.require(
        secret_hits == 0,
        format!(
            "traces of the SecretBuffer canary in the core (whole, pieces, encoded): {secret_hits}"
        ),
    );
    v.figure(format!(
        "secret {secret_hits}, heap {heap_hits} in {} KiB",
        bytes.len() / 1024
    ));
    Ok(())
}

fn core_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
