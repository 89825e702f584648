//! The evidence tables' shape is fixed by a snapshot: one line per leg with
//! the SHA-256 it tested, one column per leg, how a limit, a failure and a
//! scenario a leg does not run read. Figures and hashes here are made up.

use lab::report::{Check, ImageBuild, Leg, Outcome, Report};

fn leg(name: &str, arch: &str, kernel: &str, sha: &str) -> Leg {
    Leg {
        name: name.into(),
        arch: arch.into(),
        kernel: kernel.into(),
        dazai_sha256: sha.repeat(16),
        dazai_path: format!("target/lab/{arch}/bin/dazai"),
        daemons_seen: vec![sha.repeat(16); 3],
        tools_sha256: Default::default(),
        took_ms: 30_000,
    }
}

/// A negative control of `row` in `leg` that turned its check red.
fn control(leg: &str, row: &str) -> Check {
    Check {
        negative_control: true,
        ..check(
            leg,
            row,
            "can fail: a broken stand-in",
            Outcome::Pass,
            "red",
        )
    }
}

fn check(leg: &str, row: &str, scenario: &str, outcome: Outcome, figure: &str) -> Check {
    Check {
        row: row.into(),
        scenario: scenario.into(),
        leg: leg.into(),
        negative_control: false,
        outcome,
        figure: figure.into(),
        evidence: vec!["observed".into()],
        took_ms: 1,
    }
}

#[test]
fn the_evidence_tables_name_each_legs_binary_and_give_each_leg_a_column() {
    let report = Report {
        run_id: String::new(),
        legs: vec![
            leg("x86_64 containers", "x86_64", "6.18.0", "0123"),
            leg(
                "aarch64 VM",
                "aarch64",
                "6.1.0-41-arm64 (linux-image-6.1.0-41-arm64 6.1.158-1)",
                "abcd",
            ),
        ],
        images: vec![ImageBuild {
            id: "sha256:0000".into(),
            image: "ningen-lab:0000".into(),
            cached: true,
            took_ms: 20,
        }],
        checks: vec![
            check(
                "x86_64 containers",
                "session loss",
                "a dropped SSH session (with a pty) runs the panic",
                Outcome::Pass,
                "2 ms",
            ),
            check(
                "x86_64 containers",
                "OOM",
                "a daemon killed by SIGKILL cannot wipe",
                Outcome::Limit,
                "child gone in 6 ms; no wipe",
            ),
            check(
                "x86_64 containers",
                "wipe",
                "the daemon wipes the secret | before its final SIGKILL",
                Outcome::Pass,
                "0 hits in 3872 KiB",
            ),
            check(
                "aarch64 VM",
                "OOM",
                "a daemon killed by SIGKILL cannot wipe",
                Outcome::Limit,
                "child gone in 40 ms; no wipe",
            ),
            check(
                "aarch64 VM",
                "wipe",
                "the daemon wipes the secret | before its final SIGKILL",
                Outcome::Fail,
                "1 hits in 3872 KiB",
            ),
            control("x86_64 containers", "wipe"),
            Check {
                outcome: Outcome::Fail,
                figure: "stayed green".into(),
                ..control("aarch64 VM", "wipe")
            },
        ],
        total_ms: 61_500,
    };
    insta::assert_snapshot!(report.markdown());
    assert!(!report.is_green(), "one FAIL makes the report red");
}

/// A misspelled `--only`, or a leg whose scenarios all stayed out, must not
/// say "lab green".
#[test]
fn a_run_with_no_checks_or_a_leg_without_any_is_not_green() {
    let empty = Report {
        run_id: String::new(),
        legs: vec![],
        images: vec![],
        checks: vec![],
        total_ms: 0,
    };
    assert!(!empty.is_green(), "no legs, no checks");
    let leg_alone = Report {
        legs: vec![leg("x86_64 containers", "x86_64", "6.18.0", "0123")],
        ..empty
    };
    assert!(!leg_alone.is_green(), "a leg with no checks");
    let one_of_two = Report {
        legs: vec![
            leg("x86_64 containers", "x86_64", "6.18.0", "0123"),
            leg("x86_64 VM", "x86_64", "6.1.0", "0123"),
        ],
        checks: vec![check(
            "x86_64 containers",
            "wipe",
            "the daemon wipes",
            Outcome::Pass,
            "0 hits",
        )],
        ..leg_alone
    };
    assert!(!one_of_two.is_green(), "the VM leg ran nothing");
}

/// The hash of the file the leg names is not enough: every daemon's
/// `/proc/PID/exe` must have it, or the run is red.
#[test]
fn a_leg_whose_daemons_ran_another_binary_is_not_green() {
    let mut leg = leg("x86_64 containers", "x86_64", "6.18.0", "0123");
    let checks = vec![
        check(
            "x86_64 containers",
            "wipe",
            "the daemon wipes",
            Outcome::Pass,
            "0 hits",
        ),
        control("x86_64 containers", "wipe"),
    ];
    let report = |leg: Leg| Report {
        run_id: String::new(),
        legs: vec![leg],
        images: vec![],
        checks: checks.clone(),
        total_ms: 0,
    };
    assert!(report(leg.clone()).is_green());
    leg.daemons_seen.push("f".repeat(64));
    assert!(
        !report(leg.clone()).is_green(),
        "one daemon ran another binary"
    );
    leg.daemons_seen.clear();
    assert!(!report(leg).is_green(), "no daemon seen at all");
}

/// A row whose checks were never shown able to fail is not evidence: the
/// run is red until every row of every leg has a negative control.
#[test]
fn a_row_without_a_negative_control_in_a_leg_is_not_green() {
    let legs = vec![
        leg("x86_64 containers", "x86_64", "6.18.0", "0123"),
        leg("x86_64 VM", "x86_64", "6.1.0", "0123"),
    ];
    let passed = |leg: &str, row: &str| check(leg, row, "it holds", Outcome::Pass, "");
    let mut report = Report {
        run_id: String::new(),
        legs,
        images: vec![],
        checks: vec![
            passed("x86_64 containers", "wipe"),
            control("x86_64 containers", "wipe"),
            passed("x86_64 VM", "wipe"),
            control("x86_64 VM", "wipe"),
            passed("x86_64 VM", "OOM"),
        ],
        total_ms: 0,
    };
    assert_eq!(report.rows_without_a_control(), [("x86_64 VM", "OOM")]);
    assert!(!report.is_green(), "OOM ran in the VM with no control");
    report.checks.push(control("x86_64 VM", "OOM"));
    assert!(report.is_green(), "{:?}", report.rows_without_a_control());
    // A control of another leg does not count.
    report.checks.push(passed("x86_64 containers", "swap"));
    report.checks.push(control("x86_64 VM", "swap"));
    assert_eq!(
        report.rows_without_a_control(),
        [("x86_64 containers", "swap")]
    );
}
