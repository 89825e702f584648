//! The seccomp seal as the running daemon shows it (docs/design.md, "Start-up"). Every other
//! test in this suite also runs against the live filter when the binary is
//! built with `--features seccomp`, and fails if the daemon dies by SIGSYS.

use std::fs;

use dazai_e2e::{dazai, DaemonBuilder};

/// `Seccomp:` and `Seccomp_filters:` of every thread of `pid`.
fn seccomp_of_every_thread(pid: i32) -> Vec<(String, u32)> {
    let mut threads = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        threads.push((
            field("Seccomp:"),
            field("Seccomp_filters:").parse().unwrap_or(0),
        ));
    }
    threads
}

#[test]
fn a_sealed_daemon_runs_in_seccomp_filter_mode_on_every_thread() {
    let daemon = DaemonBuilder::new().secret("api", "x").start();
    let sealed = daemon.ready_line.contains("seccomp=on");
    let threads = seccomp_of_every_thread(daemon.pid);
    assert!(!threads.is_empty());
    let status = daemon.status();
    if sealed {
        for (mode, filters) in &threads {
            assert_eq!(mode, "2", "Seccomp: 2 (filter mode) on every thread");
            assert!(*filters >= 1, "at least one filter installed");
        }
        assert!(status["seccomp"].as_str().unwrap().starts_with("on ("));
    } else {
        for (mode, _) in &threads {
            assert_eq!(mode, "0", "a build without the feature installs nothing");
        }
        assert!(
            status["seccomp"]
                .as_str()
                .unwrap()
                .starts_with("off (built with --no-default-features"),
            "{status}"
        );
    }
}

#[test]
fn print_seccomp_shows_the_allowlist_of_this_architecture() {
    let output = dazai()
        .args(["daemon", "--print-seccomp"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let arch = std::env::consts::ARCH;
    assert!(
        text.contains(&format!("seccomp allowlist for {arch}")),
        "{text}"
    );
    let allowed: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("seccomp allowlist"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for needed in ["accept4", "recvfrom", "sendto", "pidfd_send_signal"] {
        assert!(allowed.contains(&needed), "{needed} missing: {text}");
    }
    for denied in ["execve", "openat", "connect", "socket", "ptrace"] {
        assert!(!allowed.contains(&denied), "{denied} allowed: {text}");
    }
}
