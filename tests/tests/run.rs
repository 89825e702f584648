//! `dazai run`: the common case in one command, tied to the invoking session.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use dazai_e2e::{dazai, eventually, is_alive, wait_exit};

fn run_command(dir: &std::path::Path, script: &str) -> Command {
    let mut command = dazai();
    command
        .arg("run")
        .arg("--socket")
        .arg(dir.join("run.sock"))
        .args(["--secret", "api=env:DAZAI_TEST_RUN_SECRET"])
        .arg("--")
        .args(["/bin/sh", "-c", script])
        .env("DAZAI_TEST_RUN_SECRET", "canary-run")
        .env("DIR", dir);
    command
}

#[test]
fn run_passes_the_programs_exit_status_through() {
    let dir = tempfile::tempdir().unwrap();
    let status = run_command(dir.path(), "exit 3")
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(!dir.path().join("run.sock").exists(), "socket cleaned up");
}

#[test]
fn get_works_inside_the_program_without_set_up() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"{} get api > "$DIR/got""#,
        dazai_e2e::dazai_bin().display()
    );
    let status = run_command(dir.path(), &script)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        fs::read_to_string(dir.path().join("got")).unwrap(),
        "canary-run"
    );
}

/// Makes the pty's slave side the controlling terminal of a new session.
fn in_new_session_on(command: &mut Command, slave: &OwnedFd) {
    command
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe system
    // calls, made in the child between fork and exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn closing_the_terminal_under_run_kills_the_program_and_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let pty = nix::pty::openpty(None, None).unwrap();
    // Only this test may hold the master: closing it must hang the terminal up.
    nix::fcntl::fcntl(
        &pty.master,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .unwrap();
    let mut command = run_command(
        dir.path(),
        r#"echo $$ > "$DIR/program.pid"; exec sleep 600"#,
    );
    in_new_session_on(&mut command, &pty.slave);
    let mut run = command.spawn().unwrap();
    drop(pty.slave);
    let pid_file = dir.path().join("program.pid");
    eventually("the program to start", || {
        fs::read_to_string(&pid_file).is_ok_and(|t| t.ends_with('\n'))
    });
    let program: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let daemon_pid: i32 = {
        let pidfile = dir.path().join("run.pid");
        eventually("the daemon's pidfile", || pidfile.exists());
        fs::read_to_string(pidfile).unwrap().trim().parse().unwrap()
    };

    drop(pty.master); // the terminal window closes

    let status = wait_exit(&mut run);
    eventually("the program to be killed", || !is_alive(program));
    eventually("the daemon to be gone", || !is_alive(daemon_pid));
    assert_ne!(
        status.code(),
        Some(0),
        "run reports the lost session: {status:?}"
    );
}
