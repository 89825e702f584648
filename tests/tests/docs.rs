//! The snippets users copy from `docs/usage.md` work as written.

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
