//! The lab can fail: its wipe scenario, pointed at deliberately broken
//! stand-ins for the daemon, turns red, and pointed at a correct one stays
//! green. Runs inside `cargo xtask lab` (root, docker, the lab image, and
//! `LAB_BIN_DIR` with the binaries); anywhere else it fails and says why.

use std::path::PathBuf;

use lab::env::{fresh_canary, Env, Lab, Machines, PATIENCE};
use lab::report::Outcome;
use lab::runner::Verdict;
use lab::scenarios::wipe::{every_copy_is_locked, wiped_at_self_kill};

fn lab(test: &str) -> Lab {
    let bin_dir = std::env::var_os("LAB_BIN_DIR").map(PathBuf::from).expect(
        "LAB_BIN_DIR is not set: the lab's own tests run through `cargo xtask lab` \
         (root, docker and the lab image are needed)",
    );
    let work = std::env::temp_dir().join(format!("ningen-lab-{test}-{}", std::process::id()));
    std::fs::create_dir_all(work.join("ssh")).expect("scratch directory");
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
        bin_dir,
        work,
        arch: std::env::consts::ARCH.to_owned(),
    }
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

    let (pid, canary) = hold(&env, "broken", &["--skip-wipe"]);
    let mut broken = Verdict::new();
    wiped_at_self_kill(&env, pid, &canary, &mut broken).expect("observer ran");
    assert_eq!(
        broken.outcome(),
        Outcome::Fail,
        "a probe that never wipes must turn the wipe row red: {:?}",
        broken.evidence()
    );
    assert!(
        broken
            .evidence()
            .iter()
            .any(|e| e.contains("FAILED: 1 canary hits")),
        "red for the right reason (the canary found at the self-SIGKILL): {:?}",
        broken.evidence()
    );

    let (pid, canary) = hold(&env, "correct", &[]);
    let mut correct = Verdict::new();
    wiped_at_self_kill(&env, pid, &canary, &mut correct).expect("observer ran");
    assert_eq!(
        correct.outcome(),
        Outcome::Pass,
        "the same probe with its wipe must pass: {:?}",
        correct.evidence()
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
    assert_eq!(
        verdict.outcome(),
        Outcome::Fail,
        "a stray heap copy must turn the live scan red: {:?}",
        verdict.evidence()
    );
    assert!(
        verdict
            .evidence()
            .iter()
            .any(|e| e.contains("FAILED: 1 of 2 hits lie outside")),
        "red for the right reason (one hit outside locked, dd memory): {:?}",
        verdict.evidence()
    );
    let _ = std::fs::remove_dir_all(&lab.work);
}
