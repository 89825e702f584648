//! Row **who may obtain a secret** — "a process of the daemon's UID outside
//! the supervised tree obtains no secret: connecting to the socket grants
//! nothing, `REGISTER` only opts a process into the panic's kills, a tools
//! file of its own obtains nothing, and the capability cannot be reopened
//! through `/proc/PID/fd` nor taken with `pidfd_getfd` under Yama
//! `ptrace_scope` 1" (its "what is claimed" in docs/threat-model.md).

use anyhow::{Context, Result};
use serde_json::Value;

use crate::env::{wait_for, Daemon, Env, Lab, Ran, PATIENCE, RUN};
use crate::runner::{Recorder, Verdict};

const YAMA: &str = "/proc/sys/kernel/yama/ptrace_scope";

/// The supervised program: reports its pid and capability descriptor, takes
/// the secret once with `dazai get` (through a pipe: a 9p share cannot be
/// written from secret memory), then holds the capability in `sleep`.
fn program() -> String {
    format!(
        r#"echo "$$ $DAZAI_CAPABILITY_FD" > {RUN}/holder.part && mv {RUN}/holder.part {RUN}/holder; /lab/bin/dazai get api | cat > {RUN}/got.part && mv {RUN}/got.part {RUN}/got; exec sleep 600"#
    )
}

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    // Docker's default seccomp profile lets pidfd_getfd through only with
    // SYS_PTRACE in the container's set; `lab` holds no capability either
    // way, so the kernel's own check (and Yama's) is what answers.
    let env = lab.env("who-may-obtain").cap_add("SYS_PTRACE").start()?;
    let program = program();
    let daemon = env
        .daemon()
        .args(&["--memory", "locked"])
        .exec(&["/bin/sh", "-c", &program])
        .start()?;
    let _client = daemon.attach_client(&env)?;
    let (pid, fd) = holder(&env)?;
    let target = Target {
        env: &env,
        daemon: &daemon,
        holder_pid: pid,
        capability_fd: fd,
    };
    rec.check(
        "the supervised program's own `dazai get` obtains the secret (control)",
        |v| target.program_obtains_it(v),
    );
    rec.check(
        "outside the tree, the socket gives 0 secret bytes: REGISTER + GET by the CLI and the raw protocol",
        |v| target.outside_obtains_nothing(v),
    );
    rec.check(
        "a tools file of its own obtains nothing: the relay takes none, an executor it starts holds no capability",
        |v| own_tools_file(&env, &daemon, v),
    );
    rec.check(
        "the capability cannot be reopened through /proc/PID/fd (ENXIO)",
        |v| target.cannot_reopen_the_capability(v),
    );
    rec.control(
        "the same `dazai register $$; dazai get api` by a process the daemon handed the capability (what a daemon without the capability rule gives everyone)",
        "`dazai register $$; dazai get api`: exit",
        |v| {
            let (insider, attempt) = attempt_inside_the_tree(&env)?;
            obtained_nothing(&attempt, &insider, v);
            Ok(())
        },
    );
    let yama = env.sh("root", &format!("cat {YAMA}"))?;
    let has_yama = yama.code == Some(0);
    if has_yama {
        rec.check(
            "pidfd_getfd of the capability is refused under Yama ptrace_scope 1",
            |v| target.pidfd_getfd_refused_under_yama(v),
        );
    }
    rec.check(
        "with ptrace allowed (ptrace_scope 0, or no Yama), pidfd_getfd takes the capability (the limit)",
        |v| {
            if has_yama {
                v.note(format!("Yama present (ptrace_scope was {})", yama.stdout.trim()));
            } else {
                v.note("this kernel has no Yama: ptrace is the kernel's default check alone");
            }
            target.pidfd_getfd_takes_it_with_ptrace_allowed(has_yama, v)
        },
    );
    Ok(())
}

/// The daemon under attack and the supervised program holding its capability.
struct Target<'a> {
    env: &'a Env,
    daemon: &'a Daemon,
    holder_pid: i32,
    capability_fd: i32,
}

impl Target<'_> {
    /// `lab-probe steal` as `lab`, outside the tree.
    fn steal(&self) -> Result<Value> {
        steal(self.env, self.daemon, self.holder_pid, self.capability_fd)
    }

    fn program_obtains_it(&self, v: &mut Verdict) -> Result<()> {
        let got = wait_for("the program's dazai get", PATIENCE, || {
            std::fs::read(self.env.run_dir.join("got")).ok()
        })?;
        let equal = got == self.daemon.canary;
        v.require(
            equal,
            format!(
                "inside the tree: {} bytes, {} the canary",
                got.len(),
                if equal { "equal to" } else { "not" }
            ),
        );
        v.figure(format!("{} bytes", got.len()));
        Ok(())
    }

    fn outside_obtains_nothing(&self, v: &mut Verdict) -> Result<()> {
        let cli = self
            .env
            .sh("lab", &register_then_get(&self.daemon.socket))?;
        obtained_nothing(&cli, self.daemon, v);
        let seen = self.steal()?;
        v.require(
            seen["register"]
                .as_str()
                .unwrap_or("")
                .starts_with("OK registered"),
            format!("raw REGISTER → {}", seen["register"]),
        );
        v.require(
            seen["get"]
                .as_str()
                .unwrap_or("")
                .starts_with("ERR refused")
                && seen["get_secret_bytes"] == 0,
            format!(
                "raw GET after it → {} ({} secret bytes)",
                seen["get"], seen["get_secret_bytes"]
            ),
        );
        v.figure("0 bytes");
        Ok(())
    }

    fn cannot_reopen_the_capability(&self, v: &mut Verdict) -> Result<()> {
        let seen = self.steal()?;
        v.require(
            seen["proc_fd_open"] == "ENXIO",
            format!(
                "open /proc/{}/fd/{} as uid {} → {}",
                self.holder_pid, self.capability_fd, seen["uid"], seen["proc_fd_open"]
            ),
        );
        v.figure("ENXIO");
        Ok(())
    }

    fn pidfd_getfd_refused_under_yama(&self, v: &mut Verdict) -> Result<()> {
        let seen = with_ptrace_scope(self.env, "1", || self.steal())?;
        v.require(
            seen["pidfd_getfd"] == "EPERM" && seen["through_taken"]["secret_bytes"] == 0,
            format!(
                "ptrace_scope 1: pidfd_getfd as uid {} → {}, 0 secret bytes",
                seen["uid"], seen["pidfd_getfd"]
            ),
        );
        v.figure("EPERM");
        Ok(())
    }

    /// The limit: whoever may ptrace the holder may take its descriptor.
    fn pidfd_getfd_takes_it_with_ptrace_allowed(
        &self,
        has_yama: bool,
        v: &mut Verdict,
    ) -> Result<()> {
        let seen = if has_yama {
            with_ptrace_scope(self.env, "0", || self.steal())?
        } else {
            self.steal()?
        };
        let obtained = seen["through_taken"]["secret_bytes"].as_u64().unwrap_or(0);
        v.require(
            seen["pidfd_getfd"] == "ok" && obtained as usize == self.daemon.canary.len(),
            format!(
                "pidfd_getfd → {}; a GET through the taken descriptor obtained {obtained} secret bytes {}",
                seen["pidfd_getfd"],
                seen["through_taken"].get("error").map(|e| e.to_string()).unwrap_or_default()
            ),
        );
        v.as_limit();
        v.figure(format!("{obtained} bytes"));
        Ok(())
    }
}

/// What a script with a shell types to take the secret: register itself, then get.
fn register_then_get(socket: &str) -> String {
    format!(
        "/lab/bin/dazai register $$ --socket {socket} >/dev/null && exec /lab/bin/dazai get api"
    )
}

/// The attempt was refused (exit 4) and its output holds no secret byte.
fn obtained_nothing(attempt: &Ran, daemon: &Daemon, v: &mut Verdict) {
    let leaked = contains_canary(attempt.stdout.as_bytes(), daemon);
    v.require(
        attempt.code == Some(4) && !leaked,
        format!(
            "`dazai register $$; dazai get api`: exit {:?}, {} stdout bytes, canary {}; {}",
            attempt.code,
            attempt.stdout.len(),
            if leaked { "PRESENT" } else { "absent" },
            attempt.stderr.trim()
        ),
    );
}

/// [`register_then_get`] run by the supervised program of a second daemon,
/// which holds the capability; returns that daemon and what the attempt gave.
fn attempt_inside_the_tree(env: &Env) -> Result<(Daemon, Ran)> {
    // Not `insider.*`: the launcher keeps the daemon's own output there.
    let done = format!("{RUN}/attempt.code");
    let program = format!(
        "( {} ) > {RUN}/attempt.out 2> {RUN}/attempt.err; echo $? > {done}.part && mv {done}.part {done}; exec sleep 600",
        register_then_get("\"$DAZAI_SOCKET\"")
    );
    let insider = env
        .daemon()
        .named("insider")
        .args(&["--memory", "locked"])
        .exec(&["/bin/sh", "-c", &program])
        .start()?;
    let _client = insider.attach_client(env)?;
    let code = wait_for("the insider's attempt", PATIENCE, || {
        std::fs::read_to_string(env.run_dir.join("attempt.code")).ok()
    })?;
    let read = |name: &str| std::fs::read_to_string(env.run_dir.join(name)).unwrap_or_default();
    let attempt = Ran {
        code: code.trim().parse().ok(),
        stdout: read("attempt.out"),
        stderr: read("attempt.err"),
    };
    Ok((insider, attempt))
}

/// The supervised program's pid and its capability's descriptor number.
fn holder(env: &Env) -> Result<(i32, i32)> {
    let text = wait_for("the program's report", PATIENCE, || {
        std::fs::read_to_string(env.run_dir.join("holder")).ok()
    })?;
    let (pid, fd) = text
        .trim()
        .split_once(' ')
        .with_context(|| format!("holder report {text:?}"))?;
    Ok((pid.parse()?, fd.parse()?))
}

/// `lab-probe steal` as `lab`, the daemon's UID, outside the tree.
fn steal(env: &Env, daemon: &Daemon, pid: i32, fd: i32) -> Result<Value> {
    let ran = env.exec(
        "lab",
        &[
            "/lab/bin/lab-probe",
            "steal",
            &daemon.socket,
            &pid.to_string(),
            &fd.to_string(),
            &daemon.canary_file,
        ],
    )?;
    crate::env::last_json(&ran.stdout)
        .with_context(|| format!("lab-probe steal: {} {}", ran.stdout, ran.stderr))
}

fn own_tools_file(env: &Env, daemon: &Daemon, v: &mut Verdict) -> Result<()> {
    let tools = env.put(
        "own-tools.toml",
        b"[[tool]]\nname = \"leak\"\ndescription = \"d\"\nkind = \"static\"\nsecret = \"api\"\n",
    )?;
    for (what, argv, code) in [
        (
            "`dazai mcp --tools OWN`",
            vec![
                "/lab/bin/dazai",
                "mcp",
                "--tools",
                &tools,
                "--socket",
                &daemon.socket,
            ],
            2,
        ),
        (
            "`dazai mcp serve --tools OWN`",
            vec![
                "/lab/bin/dazai",
                "mcp",
                "serve",
                "--tools",
                &tools,
                "--socket",
                &daemon.socket,
            ],
            4,
        ),
    ] {
        let ran = env.exec("lab", &argv)?;
        v.require(
            ran.code == Some(code) && !contains_canary(ran.stdout.as_bytes(), daemon),
            format!(
                "{what}: exit {:?}, canary absent; {}",
                ran.code,
                ran.stderr.trim()
            ),
        );
    }
    v.figure("0 bytes");
    Ok(())
}

fn contains_canary(bytes: &[u8], daemon: &Daemon) -> bool {
    bytes
        .windows(daemon.canary.len())
        .any(|window| window == daemon.canary)
}

/// Runs `body` with Yama's `ptrace_scope` at `value`, then puts back what
/// was there (the host's setting, for a container, through its guard).
fn with_ptrace_scope<T>(env: &Env, value: &str, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let before = env
        .sh("root", &format!("cat {YAMA}"))?
        .stdout
        .trim()
        .to_owned();
    let guard = env.set_kernel_setting(YAMA, value)?;
    let outcome = body();
    match guard {
        Some(host_setting) => drop(host_setting),
        None => {
            env.set_kernel_setting(YAMA, &before)?;
        }
    }
    outcome
}
