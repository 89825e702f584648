//! The command line as users meet it: help texts (snapshots, so a change shows
//! in review) and one-line errors with distinct exit codes.

use assert_cmd::Command;
use predicates::prelude::*;
use std::os::unix::fs::PermissionsExt;

fn help_of(args: &[&str]) -> String {
    let output = Command::new(dazai_e2e::dazai_bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn help_texts_are_stable() {
    for sub in [
        &[][..],
        &["daemon"],
        &["client"],
        &["status"],
        &["panic"],
        &["get"],
        &["register"],
    ] {
        let name = if sub.is_empty() {
            "dazai".to_owned()
        } else {
            format!("dazai-{}", sub[0])
        };
        insta::assert_snapshot!(name, help_of(sub));
    }
}

#[test]
fn status_against_no_daemon_says_so_in_one_line_with_the_path() {
    Command::new(dazai_e2e::dazai_bin())
        .args(["status", "--socket", "/nonexistent/dazai.sock"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(
            "no daemon answers on /nonexistent/dazai.sock",
        ))
        .stderr(predicate::function(|s: &str| s.lines().count() == 1));
}

#[test]
fn a_missing_secret_source_is_a_one_line_error_with_exit_code_6() {
    let dir = tempfile::tempdir().unwrap();
    Command::new(dazai_e2e::dazai_bin())
        .args(["daemon", "--socket"])
        .arg(dir.path().join("s.sock"))
        .args(["--secret", "api=env:DAZAI_TEST_UNSET_VARIABLE"])
        .env_remove("DAZAI_TEST_UNSET_VARIABLE")
        .assert()
        .code(6)
        .stderr(predicate::str::contains(
            "environment variable DAZAI_TEST_UNSET_VARIABLE is not set",
        ))
        .stderr(predicate::function(|s: &str| s.lines().count() == 1));
}

#[test]
fn a_program_that_cannot_start_is_a_one_line_error_with_exit_code_8() {
    let dir = tempfile::tempdir().unwrap();
    Command::new(dazai_e2e::dazai_bin())
        .args(["daemon", "--socket"])
        .arg(dir.path().join("s.sock"))
        .args(["--exec", "/nonexistent/program", "--flag"])
        .assert()
        .code(8)
        .stderr(predicate::str::contains(
            "cannot start \"/nonexistent/program\"",
        ))
        .stderr(predicate::function(|s: &str| s.lines().count() == 1));
}

/// `dazai mcp` runs `dazai-mcp` from beside `dazai` (the MCP stack is not in
/// the executable that holds secrets); a `dazai` copied alone says what is
/// missing, and a copy with its `dazai-mcp` beside it works.
#[test]
fn dazai_mcp_without_its_executable_beside_dazai_is_a_one_line_error_with_exit_code_8() {
    let dir = tempfile::tempdir().unwrap();
    let alone = dir.path().join("dazai");
    std::fs::copy(dazai_e2e::dazai_bin(), &alone).unwrap();
    Command::new(&alone)
        .args(["mcp", "serve", "--tools", "/nonexistent/tools.toml"])
        .assert()
        .code(8)
        .stderr(predicate::str::contains(format!(
            "cannot run {} (No such file or directory",
            dir.path().join("dazai-mcp").display()
        )))
        .stderr(predicate::str::contains(
            "fix: install dazai-mcp beside dazai",
        ))
        .stderr(predicate::function(|s: &str| s.lines().count() == 1));

    let mcp = dazai_e2e::dazai_bin().with_file_name("dazai-mcp");
    std::fs::copy(mcp, dir.path().join("dazai-mcp")).unwrap();
    Command::new(&alone)
        .args(["mcp", "serve", "--tools", "/nonexistent/tools.toml"])
        .assert()
        .code(9)
        .stderr(predicate::str::contains("/nonexistent/tools.toml"))
        .stderr(predicate::function(|s: &str| s.lines().count() == 1));
}
#[test]
fn status_gives_a_compact_human_view_and_the_same_fields_as_json() {
    let daemon = dazai_e2e::DaemonBuilder::new()
        .secret("api", "canary-status-view")
        // A fixed backend: the automatic one depends on the kernel.
        .args(&["--grace", "5", "--memory", "locked"])
        .start();
    let run = |json: bool| {
        let mut command = Command::new(dazai_e2e::dazai_bin());
        command.args(["status", "--socket"]).arg(&daemon.socket);
        if json {
            command.arg("--json");
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let human = run(false);
    let json: serde_json::Value = serde_json::from_str(&run(true)).unwrap();

    assert!(!human.contains("canary-status-view") && !json.to_string().contains("canary"));
    assert_eq!(json["secrets"][0]["name"], "api");
    assert_eq!(json["grace_secs"], 5);
    let human = human
        .replace(&daemon.pid.to_string(), "PID")
        .replace("seccomp: on (", "seccomp: ")
        .replace("seccomp: off", "seccomp: STATE");
    let human: String = human
        .lines()
        .map(|l| match l.split_once("seccomp: ") {
            Some((head, _)) => format!("{head}seccomp: STATE\n"),
            None => format!("{l}\n"),
        })
        .collect();
    insta::assert_snapshot!(human);
}

/// Runs `dazai` with `args` and returns its one stderr line with run-specific
/// paths replaced.
fn one_line_error(args: &[&str], dir: &std::path::Path, code: i32) -> String {
    let output = Command::new(dazai_e2e::dazai_bin())
        .args(args)
        .env_remove("DAZAI_SOCKET")
        .env_remove("DAZAI_CAPABILITY_FD")
        .env_remove("DAZAI_TEST_UNSET")
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    stderr.replace(&dir.display().to_string(), "DIR")
}

#[test]
fn every_user_facing_error_is_one_line_with_cause_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(d("not-a-socket"), "").unwrap();
    std::fs::write(d("big"), vec![b'x'; 70 * 1024]).unwrap();
    // Start-up and endpoint errors: a socket directory others may write, one
    // that is a symlink, and a pidfile naming a process that runs (pid 1).
    std::fs::create_dir(d("shared")).unwrap();
    std::fs::set_permissions(d("shared"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(dir.path(), d("link")).unwrap();
    std::fs::write(d("running.pid"), "1\n").unwrap();
    let cases: Vec<(Vec<String>, i32)> = vec![
        (vec!["status".into(), "--socket".into(), d("none.sock")], 3),
        (vec!["get".into(), "api".into()], 4),
        (
            vec!["daemon".into(), "--socket".into(), d("not-a-socket")],
            7,
        ),
        (
            vec![
                "daemon".into(),
                "--socket".into(),
                d("a.sock"),
                "--secret".into(),
                "api=env:DAZAI_TEST_UNSET".into(),
            ],
            6,
        ),
        (
            vec![
                "daemon".into(),
                "--socket".into(),
                d("b.sock"),
                "--secret".into(),
                format!("api=file:{}", d("missing")),
            ],
            6,
        ),
        (
            vec![
                "daemon".into(),
                "--socket".into(),
                d("c.sock"),
                "--secret".into(),
                format!("api=file:{}", d("big")),
            ],
            6,
        ),
        (
            vec![
                "daemon".into(),
                "--socket".into(),
                d("e.sock"),
                "--secret".into(),
                "api=fd:97".into(),
            ],
            6,
        ),
        (
            vec![
                "daemon".into(),
                "--socket".into(),
                d("f.sock"),
                "--exec".into(),
                "/nonexistent/program".into(),
            ],
            8,
        ),
        (
            vec!["daemon".into(), "--socket".into(), d("shared/g.sock")],
            7,
        ),
        (
            vec!["daemon".into(), "--socket".into(), d("link/h.sock")],
            7,
        ),
        (
            vec![
                "daemon".into(),
                "--socket".into(),
                d("i.sock"),
                "--pidfile".into(),
                d("running.pid"),
            ],
            7,
        ),
    ];
    let mut errors = String::new();
    for (args, code) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = one_line_error(&args, dir.path(), *code);
        assert!(line.starts_with("dazai: error: "), "{line}");
        assert!(line.contains("; fix: "), "no fix named: {line}");
        errors.push_str(&format!("exit {code}: {line}"));
    }
    insta::assert_snapshot!(errors);
}

/// `DAZAI_SOCKET` set to the empty string means the default socket, not a
/// missing value.
#[test]
fn an_empty_dazai_socket_means_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(dazai_e2e::dazai_bin())
        .arg("status")
        .env("DAZAI_SOCKET", "")
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/dazai/dazai.sock", dir.path().display())),
        "{stderr}"
    );
}
