//! The evidence table's shape is fixed by a snapshot: columns, their order,
//! how a limit and a failure read. Figures and hashes here are made up.

use lab::report::{Check, ImageBuild, Outcome, Report};

fn check(row: &str, scenario: &str, outcome: Outcome, figure: &str) -> Check {
    Check {
        row: row.into(),
        scenario: scenario.into(),
        arch: "x86_64".into(),
        outcome,
        figure: figure.into(),
        evidence: vec!["observed".into()],
        took_ms: 1,
    }
}

#[test]
fn the_evidence_table_has_row_scenario_arch_result_figure_and_binary_hash() {
    let report = Report {
        dazai_sha256: "0123456789abcdef".repeat(4),
        dazai_path: "target/lab/bin/dazai".into(),
        kernel: "6.18.0".into(),
        images: vec![ImageBuild {
            image: "ningen-lab:0000".into(),
            cached: true,
            took_ms: 20,
        }],
        checks: vec![
            check(
                "session loss",
                "a dropped SSH session (with a pty) runs the panic",
                Outcome::Pass,
                "2 ms",
            ),
            check(
                "OOM",
                "a daemon killed by SIGKILL cannot wipe",
                Outcome::Limit,
                "child gone in 6 ms; no wipe",
            ),
            check(
                "wipe",
                "the daemon wipes the secret | before its final SIGKILL",
                Outcome::Fail,
                "1 hits in 3872 KiB",
            ),
        ],
        total_ms: 61_500,
    };
    insta::assert_snapshot!(report.markdown());
    assert!(!report.is_green(), "one FAIL makes the report red");
}
