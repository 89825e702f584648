//! The snippets users copy from `docs/usage.md` work as written.

use std::os::unix::process::CommandExt;
use std::process::Command;

use dazai_e2e::{eventually, DaemonBuilder};

/// The fenced block between `<!-- NAME` and `<!-- /NAME -->` in docs/usage.md.
fn snippet(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/usage.md"))
        .expect("docs/usage.md");
    let start = doc
        .find(&format!("<!-- {name}"))
        .unwrap_or_else(|| panic!("no {name} snippet"));
    let end = doc[start..].find(&format!("<!-- /{name} -->")).unwrap() + start;
    let block = &doc[start..end];
    let code_start = block.find("```").unwrap();
    let body_start = block[code_start..].find('\n').unwrap() + code_start + 1;
    let body_end = block.rfind("```").unwrap();
    block[body_start..body_end].to_owned()
}

#[test]
fn the_systemd_unit_in_the_docs_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = snippet("systemd-unit").replace(
        "/usr/local/bin/dazai",
        &dazai_e2e::dazai_bin().display().to_string(),
    );
    let path = dir.path().join("dazai.service");
    std::fs::write(&path, unit).unwrap();

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; cargo xtask ci installs it)");

    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{complaints}");
    assert!(complaints.trim().is_empty(), "systemd warns: {complaints}");
}

#[test]
fn the_ssh_login_snippet_ties_the_heartbeat_to_the_login_shell() {
    let daemon = DaemonBuilder::new().args(&["--grace", "60"]).start();
    let bin_dir = dazai_e2e::dazai_bin().parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut login_shell = Command::new("bash")
        .arg("-c")
        .arg(format!("{}\nsleep 2", snippet("ssh-login")))
        .env("PATH", path)
        .env("SSH_CONNECTION", "127.0.0.1 50000 127.0.0.1 22")
        .env("DAZAI_SOCKET", &daemon.socket)
        .spawn()
        .unwrap();

    eventually("the login's heartbeat to attach", || {
        daemon.status()["liveness"] == "attached"
    });
    dazai_e2e::wait_exit(&mut login_shell);

    eventually("the login shell's end to end the heartbeat", || {
        daemon.status()["liveness"] == "grace"
    });
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme.find("<!-- walkthrough").unwrap();
    let block = &readme[start..readme.find("<!-- /walkthrough -->").unwrap()];
    let body = &block[block.find("```sh\n").unwrap() + 6..block.rfind("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let script = body.replace("/tmp/dazai-demo", &demo.display().to_string());
    let bin_dir = dazai_e2e::dazai_bin().parent().unwrap().to_owned();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));

    let mut walkthrough = Command::new("bash")
        .arg("-c")
        .arg(script)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    dazai_e2e::wait_exit(&mut walkthrough);
    // Whatever the walkthrough left running (only if it failed) goes now.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(-(walkthrough.id() as i32)),
        nix::sys::signal::Signal::SIGKILL,
    );

    let stdout = std::fs::read_to_string(out_path).unwrap();
    let stderr = std::fs::read_to_string(err_path).unwrap();
    assert!(stdout.contains("attached (armed)"), "{stdout}\n{stderr}");
    assert!(stdout.contains("secret api: 7 bytes, "), "{stdout}");
    assert!(
        stderr.contains("PANIC: heartbeat connection closed"),
        "{stderr}"
    );
    assert!(
        stdout.contains("the supervised program is gone"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the daemon is gone, its secret wiped"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(demo.join("seen")).unwrap(),
        "hunter2"
    );
    // bash itself reports the killed job with its command line, value included;
    // what dazai says must not hold it.
    let from_dazai = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.starts_with("dazai"));
    for line in from_dazai {
        assert!(!line.contains("hunter2"), "leaked: {line}");
    }
}
