//! The lab can fail: its checks, pointed at deliberately broken stand-ins
//! for the daemon, turn red, and pointed at a correct one stay green, in a
//! container and (the wipe) in a VM. Runs inside `cargo xtask lab` (root,
//! docker, the lab image, `LAB_BIN_DIR` with the binaries, `LAB_VM_CACHE`
//! with the VM's kernel); anywhere else it fails and says why.

use std::path::PathBuf;
use std::sync::Arc;

use lab::env::{fresh_canary, Env, Lab, Machines, PATIENCE};
use lab::report::Outcome;
use lab::runner::Verdict;
use lab::scenarios::core_dumps::{cores_in_run_dir, dumpable_probe};
use lab::scenarios::root_reads_memory::{root_finds_no_copy, root_scans};
use lab::scenarios::wipe::{every_copy_is_locked, wiped_at_self_kill};
use lab::vm::Vm;
use lab::vm_assets::VmArch;
use lab_guest::procfs::Hit;

/// The x86_64 binaries `cargo xtask lab` staged.
fn bin_dir() -> PathBuf {
    std::env::var_os("LAB_BIN_DIR").map(PathBuf::from).expect(
        "LAB_BIN_DIR is not set: the lab's own tests run through `cargo xtask lab` \
         (root, docker and the lab image are needed)",
    )
}

/// A fresh scratch directory for `test`.
fn scratch(test: &str) -> PathBuf {
    let work = std::env::temp_dir().join(format!("ningen-lab-{test}-{}", std::process::id()));
    std::fs::create_dir_all(work.join("ssh")).expect("scratch directory");
    work
}

/// A container leg.
fn lab(test: &str) -> Lab {
    let work = scratch(test);
    let image = lab::images::lab_image();
    assert!(
        lab::images::exists(&image),
        "the lab image {image} is missing: run `cargo xtask lab`, which builds it"
    );
    Lab {
        machines: Machines::Containers {
            image,
            ssh_dir: work.join("ssh"),
        },
        bin_dir: bin_dir(),
        work,
        arch: std::env::consts::ARCH.to_owned(),
        daemons_seen: Default::default(),
    }
}

/// The check is red, and for `reason`: an evidence line starts `FAILED: reason`.
fn assert_red(verdict: &Verdict, what: &str, reason: &str) {
    assert_eq!(
        verdict.outcome(),
        Outcome::Fail,
        "{what}: {:?}",
        verdict.evidence()
    );
    assert!(
        verdict
            .evidence()
            .iter()
            .any(|e| e.starts_with(&format!("FAILED: {reason}"))),
        "red, but not for {reason:?}: {:?}",
        verdict.evidence()
    );
}

/// Where the live scan finds the canary (asserting it is found at all).
fn live_hits(env: &Env, pid: i32, canary: &str) -> Vec<Hit> {
    let mut live = Verdict::new();
    let hits = every_copy_is_locked(env, pid, canary, &mut live).expect("live scan");
    assert!(
        !hits.is_empty(),
        "the live scan found nothing: {:?}",
        live.evidence()
    );
    hits
}

/// Starts `lab-probe hold FLAGS` as `lab` with a fresh canary on stdin.
fn hold(env: &Env, name: &str, flags: &[&str]) -> (i32, String) {
    let canary = env
        .put(&format!("{name}.canary"), &fresh_canary())
        .expect("canary file");
    let mut argv = vec!["/lab/bin/lab-probe", "hold"];
    argv.extend_from_slice(flags);
    let probe = env
        .launch("lab", name, Some(&canary), &argv)
        .expect("launch probe");
    probe
        .wait_output("lab-probe hold ready", PATIENCE)
        .expect("probe ready");
    (probe.pid, canary)
}

#[test]
fn the_wipe_scenario_turns_red_against_a_probe_that_skips_the_wipe_and_green_against_one_that_wipes(
) {
    let lab = lab("can-fail-wipe");
    let env = lab
        .env("can-fail")
        .cap_add("SYS_PTRACE")
        .start()
        .expect("container");
    assert_wipe_check_tells_broken_from_correct(&env);
    let _ = std::fs::remove_dir_all(&lab.work);
}

/// The same inside a VM on Debian's kernel: a check that fails in a VM leg
/// turns red like one in a container.
#[test]
fn inside_the_x86_64_vm_the_wipe_scenario_turns_red_against_a_probe_that_skips_the_wipe() {
    let work = scratch("can-fail-vm");
    let cache = std::env::var_os("LAB_VM_CACHE")
        .map(PathBuf::from)
        .expect("LAB_VM_CACHE is not set: the lab's own tests run through `cargo xtask lab`");
    let assets = lab::vm_assets::fetch(VmArch::X86_64, &cache, &mut |_| {}).expect("VM assets");
    let bin_dir = bin_dir();
    let vm =
        Vm::boot(&assets, &bin_dir.join("lab-init"), &bin_dir, &work).expect("the x86_64 VM boots");
    let lab = Lab {
        machines: Machines::Vm(Arc::new(vm)),
        bin_dir,
        work: work.clone(),
        arch: "x86_64".to_owned(),
        daemons_seen: Default::default(),
    };
    let env = lab
        .env("can-fail-vm")
        .start()
        .expect("an environment in the VM");
    assert_wipe_check_tells_broken_from_correct(&env);
    drop(env);
    drop(lab);
    let _ = std::fs::remove_dir_all(&work);
}

/// The at-SIGKILL scan is red on a probe that skips its wipe, for that
/// reason, and green on the same probe with its wipe.
fn assert_wipe_check_tells_broken_from_correct(env: &Env) {
    let (pid, canary) = hold(env, "broken", &["--skip-wipe"]);
    let held = live_hits(env, pid, &canary);
    let mut broken = Verdict::new();
    wiped_at_self_kill(env, pid, &canary, &held, &mut broken).expect("observer ran");
    assert_red(
        &broken,
        "a probe that never wipes must turn the wipe row red",
        "1 canary hits",
    );

    let (pid, canary) = hold(env, "correct", &[]);
    let held = live_hits(env, pid, &canary);
    let mut correct = Verdict::new();
    wiped_at_self_kill(env, pid, &canary, &held, &mut correct).expect("observer ran");
    assert_eq!(
        correct.outcome(),
        Outcome::Pass,
        "the same probe with its wipe must pass: {:?}",
        correct.evidence()
    );
}

/// A whole-canary scan cannot see half a canary: the scans look for pieces.
#[test]
fn the_wipe_scenario_turns_red_against_a_probe_whose_wipe_leaves_half_the_secret() {
    let lab = lab("can-fail-half");
    let env = lab
        .env("can-fail-half")
        .cap_add("SYS_PTRACE")
        .start()
        .expect("container");
    let (pid, canary) = hold(&env, "leaves-half", &["--leave-half"]);
    let mut verdict = Verdict::new();
    wiped_at_self_kill(&env, pid, &canary, &[], &mut verdict).expect("observer ran");
    assert_red(
        &verdict,
        "half a secret left behind must turn the wipe row red",
        "1 canary hits",
    );
    let _ = std::fs::remove_dir_all(&lab.work);
}

#[test]
fn the_live_scan_turns_red_against_a_probe_that_leaves_a_heap_copy() {
    let lab = lab("can-fail-heap");
    let env = lab
        .env("can-fail-heap")
        .cap_add("SYS_PTRACE")
        .start()
        .expect("container");
    let (pid, canary) = hold(&env, "heap-copy", &["--heap-copy"]);
    let mut verdict = Verdict::new();
    every_copy_is_locked(&env, pid, &canary, &mut verdict).expect("observer ran");
    assert_red(
        &verdict,
        "a stray heap copy must turn the live scan red",
        "1 of 2 hits lie outside",
    );
    let _ = std::fs::remove_dir_all(&lab.work);
}

/// The core row's forced-core check, on a probe that also keeps its secret
/// in ordinary memory: the secret is in the core, and the check is red.
#[test]
fn the_core_check_turns_red_against_a_probe_that_keeps_its_secret_in_dumped_memory() {
    let lab = lab("can-fail-core");
    let env = lab
        .env("can-fail-core")
        .core_dumps()
        .start()
        .expect("container");
    let (cores, _pattern) = cores_in_run_dir(&env).expect("core_pattern");
    let mut verdict = Verdict::new();
    dumpable_probe(&env, &cores, &["--secret-on-heap"], &mut verdict).expect("the probe ran");
    assert_red(
        &verdict,
        "a secret in dumped memory must turn the core row red",
        "traces of the SecretBuffer canary in the core",
    );
    let _ = std::fs::remove_dir_all(&lab.work);
}

/// The secretmem claim, checked against a daemon of the locked backend: the
/// kernel's EIO on a `/secretmem` mapping is missing and root finds the
/// secret, so the check is red whatever the daemon says of its backend.
#[test]
fn the_secretmem_check_turns_red_against_a_daemon_of_the_locked_backend() {
    let lab = lab("can-fail-root");
    let env = lab
        .env("can-fail-root")
        .cap_add("SYS_PTRACE")
        .start()
        .expect("container");
    let locked = root_scans(&env, "locked").expect("root scanned a locked daemon");
    let mut verdict = Verdict::new();
    root_finds_no_copy(&locked, &mut verdict).expect("the check ran");
    assert_red(
        &verdict,
        "a locked daemon must fail the secretmem claim",
        "reading the /secretmem mapping itself gives EIO",
    );
    let _ = std::fs::remove_dir_all(&lab.work);
}

/// Unmapping is not wiping: a scan at the end cannot read pages that are
/// gone, so the ranges that held the secret are looked at again.
#[test]
fn the_wipe_scenario_turns_red_against_a_probe_that_unmaps_a_copy_without_zeroing_it() {
    let lab = lab("can-fail-unmap");
    let env = lab.env("can-fail-unmap").start().expect("container");
    let (pid, canary) = hold(&env, "unmaps", &["--unmap-unwiped"]);
    let held = live_hits(&env, pid, &canary);
    assert_eq!(held.len(), 2, "two locked copies while alive: {held:?}");
    let mut verdict = Verdict::new();
    wiped_at_self_kill(&env, pid, &canary, &held, &mut verdict).expect("observer ran");
    assert_red(
        &verdict,
        "a copy unmapped without zeroing must turn the wipe row red",
        "1 of the 2 range(s) that held the secret",
    );
    let _ = std::fs::remove_dir_all(&lab.work);
}
