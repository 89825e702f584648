//! The Python reference (`daemon/python`) beside the Rust daemon: what it
//! lacks, each difference shown by a test of that name (docs/protocol.md,
//! "The Python reference"), and its client module working with either daemon.
//! These tests start the reference whatever `DAZAI_E2E_DAEMON` says; the
//! shared protocol, lifecycle, session and capability tests run against it
//! when it says `python`.

use std::fs;

use dazai_e2e::{eventually, exists, python_package_dir, stop, DaemonBuilder, Implementation};

const CANARY: &str = "canary-reference-4c2a";

/// Where the Rust daemon takes `memfd_secret(2)` pages, the reference has
/// none to take: it refuses to start rather than hold the secret elsewhere.
#[test]
fn the_reference_has_no_secretmem_and_refuses_it_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (how, flag, env) in [
        ("--memory secretmem", Some("secretmem"), None),
        ("DAZAI_MEMORY=secretmem", None, Some("secretmem")),
    ] {
        let mut command = Implementation::Python.daemon_command();
        command
            .arg("--socket")
            .arg(dir.path().join("d.sock"))
            .args(["--secret", "api=env:DAZAI_TEST_SECRET"])
            .env("DAZAI_TEST_SECRET", CANARY)
            .env_remove("DAZAI_MEMORY");
        if let Some(flag) = flag {
            command.args(["--memory", flag]);
        }
        if let Some(value) = env {
            command.env("DAZAI_MEMORY", value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{how}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{how}: {stderr}");
        assert!(
            stderr.contains(
                "secretmem unavailable: the Python reference has no memfd_secret(2) backend; fix: "
            ),
            "{how}: {stderr}"
        );
        assert!(!stderr.contains(CANARY), "{how}: {stderr}");
        assert!(
            !exists(&dir.path().join("d.sock")),
            "{how}: no daemon started"
        );
    }
}

/// No seccomp filter, no secretmem, CPython's copies, no last resort: the
/// reference names each in its status and its ready line, so nobody mistakes
/// it for the hardened daemon.
#[test]
fn the_reference_reports_what_it_lacks_in_its_status() {
    let daemon = DaemonBuilder::new()
        .implementation(Implementation::Python)
        .secret("api", CANARY)
        .start();
    assert!(
        daemon
            .ready_line
            .contains(" memory=python-reference seccomp=off "),
        "{}",
        daemon.ready_line
    );
    let status = daemon.status();
    assert_eq!(status["implementation"], "python-reference");
    assert_eq!(status["seccomp"], "off");
    assert_eq!(status["memory"], "python-reference");
    assert_eq!(status["secrets"][0]["locked"], true);
    let lacks: Vec<&str> = status["reference_lacks"]
        .as_array()
        .expect("reference_lacks is a list")
        .iter()
        .filter_map(|item| item.as_str()?.split(':').next())
        .collect();
    for lack in ["seccomp", "secretmem", "copies", "last resort"] {
        assert!(lacks.contains(&lack), "{lack} missing from {lacks:?}");
    }
    assert!(!status.to_string().contains(CANARY));
}

/// A Python program (an agent) under either daemon fetches the secret with
/// `dazai_ref.get` into a locked buffer; `python -m dazai_ref get` writes it out.
#[test]
fn the_python_client_module_gets_the_secret_from_either_daemon() {
    let program = r#"
import os, sys
import dazai_ref
with dazai_ref.get("api") as secret:
    shown = repr(secret)
    with open(os.environ["DIR"] + "/got.part", "wb") as out:
        out.write(secret.view())
        out.write(("\n" + shown).encode())
os.rename(os.environ["DIR"] + "/got.part", os.environ["DIR"] + "/got")
os.execvp(sys.executable, [sys.executable, "-m", "dazai_ref", "get", "api"])
"#;
    for implementation in [Implementation::Rust, Implementation::Python] {
        let python = dazai_e2e::python_bin();
        let mut daemon = DaemonBuilder::new()
            .implementation(implementation)
            .secret("api", CANARY)
            .env("PYTHONPATH", &python_package_dir().display().to_string())
            .exec_shell(&format!(
                r#"{python} -c '{program}' > "$DIR/printed.part" && mv "$DIR/printed.part" "$DIR/printed""#
            ))
            .start();
        let mut client = daemon.attach_client(&[]);
        eventually("the program to fetch and print the secret", || {
            exists(&daemon.path("printed"))
        });
        let got = fs::read_to_string(daemon.path("got")).unwrap();
        assert_eq!(
            got,
            format!("{CANARY}\n<Secret api: {} bytes, locked>", CANARY.len()),
            "{implementation:?}"
        );
        assert_eq!(
            fs::read_to_string(daemon.path("printed")).unwrap(),
            CANARY,
            "{implementation:?}"
        );
        assert_eq!(daemon.wait_exit().code(), Some(0), "{implementation:?}");
        assert_eq!(daemon.log().matches("handed out").count(), 2);
        stop(&mut client);
    }
}
