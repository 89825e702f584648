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
        .arg("--verbose")
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

/// A command line running `dazai run` with the test secret on `program`
/// (written to a script, so no quoting stands between it and the shell), for a pty.
fn run_line(dir: &std::path::Path, program: &str) -> String {
    let script = dir.join("program.sh");
    fs::write(&script, program).unwrap();
    format!(
        "env DAZAI_TEST_RUN_SECRET=canary-run DIR={dir} {bin} run --socket {socket} --secret api=env:DAZAI_TEST_RUN_SECRET -- /bin/sh {script}",
        dir = dir.display(),
        bin = dazai_e2e::dazai_bin().display(),
        socket = dir.join("run.sock").display(),
        script = script.display(),
    )
}

const MEGABYTE: usize = 1_000_000;

#[test]
fn a_program_printing_a_megabyte_to_pipes_gets_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_command(
        dir.path(),
        "head -c 1000000 /dev/zero | tr '\\0' o; head -c 1000000 /dev/zero | tr '\\0' e >&2",
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(0), "{:?}", output.status);
    // stdout is the program's alone: no ready line, no log line.
    assert_eq!(output.stdout.len(), MEGABYTE);
    assert!(output.stdout.iter().all(|&b| b == b'o'));
    let from_program = output.stderr.iter().filter(|&&b| b == b'e').count();
    assert!(from_program >= MEGABYTE, "{from_program} bytes on stderr");
}

#[test]
fn under_a_pty_the_program_sees_a_terminal_and_prints_a_megabyte() {
    let dir = tempfile::tempdir().unwrap();
    let program = r#"test -t 0 && test -t 1 && test -t 2 && echo "isatty: yes"
head -c 1000000 /dev/zero | tr '\0' o
head -c 1000000 /dev/zero | tr '\0' e >&2
echo
echo all-printed
"#;
    let mut session = rexpect::spawn(&run_line(dir.path(), program), Some(30_000)).unwrap();
    session.exp_string("isatty: yes").unwrap();
    let printed = session.exp_string("all-printed").unwrap();
    let o = printed.bytes().filter(|&b| b == b'o').count();
    let e = printed.bytes().filter(|&b| b == b'e').count();
    assert!(
        o >= MEGABYTE && e >= MEGABYTE,
        "{o} o and {e} e reached the terminal"
    );
    session.exp_eof().unwrap();
}

#[test]
fn fifty_gets_at_the_programs_first_instant_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let get = format!("exec {} get api", dazai_e2e::dazai_bin().display());
    for attempt in 0..50 {
        let output = run_command(dir.path(), &get)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            (output.status.code(), output.stdout.as_slice()),
            (Some(0), b"canary-run".as_slice()),
            "attempt {attempt}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The program's pid (written to `$DIR/program.pid`) and the daemon's.
fn pids_of_run(dir: &std::path::Path) -> (i32, i32) {
    (
        read_pid(&dir.join("program.pid")),
        read_pid(&dir.join("run.pid")),
    )
}

/// The pid in `path`, once it is written whole.
fn read_pid(path: &std::path::Path) -> i32 {
    eventually(&format!("{} to be written", path.display()), || {
        fs::read_to_string(path).is_ok_and(|t| t.ends_with('\n'))
    });
    fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

const SLEEPER: &str = r#"echo $$ > "$DIR/program.pid"; exec sleep 600"#;

/// `dazai run` on [`SLEEPER`], quiet on the test's stderr.
fn spawn_sleeper_run(dir: &std::path::Path) -> std::process::Child {
    run_command(dir, SLEEPER)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `timeout` signals `dazai run`, which relays to PROGRAM only: a shell
/// waiting on a background job dies and leaves the job, which the daemon
/// must then kill.
#[test]
fn timeout_around_run_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new("timeout");
    command.arg("2").arg(dazai_e2e::dazai_bin());
    let run = run_command(
        dir.path(),
        r#"echo $$ > "$DIR/program.pid"; sleep 600 & echo $! > "$DIR/child.pid"; wait"#,
    );
    command.args(run.get_args());
    for (key, value) in run.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let mut timeout = command.stdin(Stdio::null()).spawn().unwrap();
    let (program, daemon) = pids_of_run(dir.path());
    let child = read_pid(&dir.path().join("child.pid"));

    let status = wait_exit(&mut timeout);

    assert_eq!(status.code(), Some(124), "timeout reports the time-out");
    eventually("the program to end", || !is_alive(program));
    eventually("the daemon to end", || !is_alive(daemon));
    eventually("the program's background job to end", || !is_alive(child));
}

#[test]
fn a_program_stopped_by_a_signal_gives_128_plus_n_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_command(dir.path(), "kill -TERM $$")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(143), "{stderr}");
    assert!(!stderr.contains("PANIC"), "{stderr}");
    assert!(stderr.contains("wiped 1 secrets"), "{stderr}");
}

#[test]
fn sigterm_and_sigint_to_run_reach_the_program() {
    for (signal, code) in [
        (nix::sys::signal::Signal::SIGTERM, 143),
        (nix::sys::signal::Signal::SIGINT, 130),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut run = spawn_sleeper_run(dir.path());
        let (program, daemon) = pids_of_run(dir.path());

        dazai_e2e::signal(run.id() as i32, signal);

        assert_eq!(wait_exit(&mut run).code(), Some(code), "{signal}");
        assert!(!is_alive(program), "{signal}: the program runs on");
        eventually("the daemon to end", || !is_alive(daemon));
    }
}

#[test]
fn the_invoking_shell_reads_its_terminal_after_run() {
    let dir = tempfile::tempdir().unwrap();
    let line = format!(
        "bash -c \"{}; read answer; echo got-\\$answer\"",
        run_line(dir.path(), "exit 0").replace('"', "\\\"")
    );
    let mut session = rexpect::spawn(&line, Some(20_000)).unwrap();
    session.send_line("hello").unwrap();
    session.exp_string("got-hello").unwrap();
    session.exp_eof().unwrap();
}

/// `dazai run --secret pw=prompt` on `program`, under `bash -c` so that the
/// terminal's state after it can be shown (`stty -a`).
fn prompt_line(dir: &std::path::Path, program: &str) -> String {
    let script = dir.join("program.sh");
    fs::write(&script, program).unwrap();
    let after = dir.join("after.sh");
    fs::write(
        &after,
        format!(
            "echo $$ > {dir}/bash.pid\nstty echo\nDIR={dir} {bin} run --socket {socket} --secret pw=prompt -- /bin/sh {script}\necho \"run exited $?\"\nstty -a | tr ' ' '\\n' | grep -x -e echo -e -echo\n",
            dir = dir.display(),
            bin = dazai_e2e::dazai_bin().display(),
            socket = dir.join("run.sock").display(),
            script = script.display(),
        ),
    )
    .unwrap();
    format!("bash {}", after.display())
}

#[test]
fn ctrl_c_at_the_prompt_cancels_at_once_and_restores_echo() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = rexpect::spawn(
        &prompt_line(dir.path(), "echo the program started"),
        Some(20_000),
    )
    .unwrap();
    session.exp_string("(input hidden): ").unwrap();
    session.send("half-typed").unwrap();
    session.send_control('c').unwrap();
    let rest = session.exp_string("run exited 130").unwrap();
    assert!(rest.contains("cancelled with Ctrl-C"), "{rest}");
    assert!(!rest.contains("the program started"), "{rest}");
    assert!(!rest.contains("half-typed"), "echoed: {rest}");
    session.exp_regex("\r?\necho\r?\n").unwrap();
    session.exp_eof().unwrap();
}

#[test]
fn the_prompt_honours_erase_and_hands_the_program_what_was_meant() {
    let dir = tempfile::tempdir().unwrap();
    let program = format!(
        r#"{} get pw > "$DIR/got""#,
        dazai_e2e::dazai_bin().display()
    );
    let mut session = rexpect::spawn(&prompt_line(dir.path(), &program), Some(20_000)).unwrap();
    session.exp_string("(input hidden): ").unwrap();
    session.send("canary-typoXY\x7f\x7f-fixed").unwrap();
    session.send_line("").unwrap();
    session.exp_string("run exited 0").unwrap();
    session.exp_eof().unwrap();
    assert_eq!(
        fs::read_to_string(dir.path().join("got")).unwrap(),
        "canary-typo-fixed"
    );
}

#[test]
fn nothing_reads_the_terminal_once_run_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut session = rexpect::spawn(&prompt_line(dir.path(), "exit 0"), Some(20_000)).unwrap();
    session.exp_string("(input hidden): ").unwrap();
    let pids = |parent: u32| -> Vec<i32> {
        fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect()
    };
    let bash: u32 = fs::read_to_string(dir.path().join("bash.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let run = pids(bash)[0];
    let daemon = pids(run as u32)[0];

    dazai_e2e::signal(run, nix::sys::signal::Signal::SIGKILL);

    eventually("the daemon to stop reading the terminal", || {
        !is_alive(daemon)
    });
    session.exp_string("run exited 137").unwrap();
}

#[test]
fn an_env_secret_leaves_the_environment_of_run_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = spawn_sleeper_run(dir.path());
    let (program, _) = pids_of_run(dir.path());
    for (who, pid) in [("dazai run", run.id() as i32), ("the program", program)] {
        let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
        assert!(
            !environ.windows(10).any(|w| w == b"canary-run"),
            "{who}'s /proc/PID/environ shows the secret"
        );
    }
    dazai_e2e::signal(run.id() as i32, nix::sys::signal::Signal::SIGTERM);
    wait_exit(&mut run);
}

/// The program shares the terminal: by default the daemon says nothing on
/// it but its PANIC line, and the program runs without `--`, as under `sudo`.
#[test]
fn run_is_quiet_by_default_and_takes_the_program_without_a_double_dash() {
    let dir = tempfile::tempdir().unwrap();
    let output = dazai()
        .arg("run")
        .arg("--socket")
        .arg(dir.path().join("run.sock"))
        .args(["--secret", "api=env:DAZAI_TEST_RUN_SECRET"])
        .args(["/bin/sh", "-c", "echo said; echo --flag-of-the-program"])
        .env("DAZAI_TEST_RUN_SECRET", "canary-run")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(output.stdout, b"said\n--flag-of-the-program\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[test]
fn dazai_stop_leaves_a_daemon_of_dazai_run_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = spawn_sleeper_run(dir.path());
    let (program, daemon) = pids_of_run(dir.path());
    let stop = dazai()
        .arg("stop")
        .arg("--socket")
        .arg(dir.path().join("run.sock"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&stop.stderr);
    assert_eq!(stop.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("belongs to `dazai run`"), "{stderr}");
    assert!(is_alive(program) && is_alive(daemon));
    dazai_e2e::signal(run.id() as i32, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(wait_exit(&mut run).code(), Some(143));
}

/// A real program that starts `dazai get` itself: Python's `subprocess`
/// closes inherited descriptors unless `pass_fds` names them, so the
/// capability reaches `dazai get` with `pass_fds` and not without it (the
/// error says why).
#[test]
fn a_python_program_passes_the_capability_on_with_pass_fds() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"exec python3 -c '
import os, subprocess
get = ["{bin}", "get", "api"]
capability = int(os.environ["DAZAI_CAPABILITY_FD"])
print(subprocess.run(get, pass_fds=[capability], capture_output=True).stdout.decode())
print(subprocess.run(get, capture_output=True).stderr.decode())
'"#,
        bin = dazai_e2e::dazai_bin().display()
    );
    let output = run_command(dir.path(), &script)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("canary-run"));
    assert!(
        lines.any(|l| l.contains("as Python's subprocess does unless pass_fds lists it")),
        "{stdout}"
    );
}
