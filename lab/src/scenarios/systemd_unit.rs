//! Row **systemd unit** — "the documented user unit runs the daemon as
//! written: its secret comes from a systemd credential, never the unit or the
//! environment; `systemctl --user stop` is the clean shutdown" (its "what is
//! claimed" in docs/threat-model.md).
//!
//! The scenario: the user unit docs/usage.md documents runs as written under
//! systemd as PID 1: the daemon takes its secret from a systemd credential
//! (`LoadCredential=`), never from the unit or the environment; a heartbeat
//! arms it; `systemctl --user stop` ends it by its clean shutdown (wipe,
//! socket and pidfile removed, exit 0). The limit the docs state is shown: a
//! credential encrypted with the machine's key (`LoadCredentialEncrypted=`)
//! fails a user unit on systemd 252.

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::env::{fresh_canary, wait_for, Env, Lab, Ran, PATIENCE};
use crate::runner::{Recorder, Verdict};

/// The units are installed exactly as docs/usage.md shows them, with the
/// binary where the lab keeps it.
const USAGE: &str = include_str!("../../../docs/usage.md");

/// How long systemd may take to boot, or to start lab's user manager: in a
/// VM under TCG, udev's coldplug and the first start of every unit take tens
/// of seconds.
const BOOT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(180);

/// The executor the units start looks for a tools file in the user's home.
const TOOLS: &str =
    "[[tool]]\nname = \"version\"\ndescription = \"a fixed text\"\nkind = \"static\"\nvalue = \"1\"\n";

/// The row's scenario.
pub fn run(lab: &Lab, rec: &mut Recorder) -> Result<()> {
    let starting = std::time::Instant::now();
    let env = lab.env("systemd-unit").systemd().start()?;
    let state = wait_until_booted(&env)?;
    let booted = format!(
        "systemd {state} {:.1} s after the environment's start; {}",
        starting.elapsed().as_secs_f64(),
        startup_time(&env)
    );
    let uid = env
        .exec("root", &["id", "-u", "lab"])?
        .stdout
        .trim()
        .to_owned();
    let canary = fresh_canary();
    install_for_lab(&env, &canary)?;
    let user_unit = Unit::of_lab(&env, &uid, "dazai");
    // Under TCG, beside another leg's VM, the manager has taken over 20 s.
    let manager = format!("user@{uid}.service");
    let started = wait_for("lab's systemd user manager", BOOT_PATIENCE, || {
        let active = env
            .exec("root", &["systemctl", "is-active", &manager])
            .ok()?;
        (active.stdout.trim() == "active").then_some(())
    });
    if let Err(error) = started {
        bail!("{error:#}; {}", systemd_said(&env, &manager));
    }
    let manager_start = start_duration(&env, &manager);

    rec.check(
        "the documented user unit (LoadCredential=) starts under systemd as PID 1, and a heartbeat arms it",
        |v| {
            v.note(format!("{booted}; lab's user manager runs, {manager_start}"));
            starts_armed(&env, &user_unit, &canary, v)
        },
    );
    rec.check(
        "`systemctl --user stop dazai` ends it by its clean shutdown: exit 0, wiped, socket removed",
        |v| stops_cleanly(&env, &user_unit, v),
    );
    rec.check(
        "LoadCredentialEncrypted= with the machine's key fails a user unit on this systemd (the documented limit)",
        |v| encrypted_credential_is_refused(&env, &uid, &canary, v),
    );
    rec.control(
        "the documented unit with the secret also set in its environment (`Environment=API_KEY=…`)",
        "no copy of the secret in the environment",
        |v| {
            let leaky = install_leaky_unit(&env, &uid, &canary)?;
            let outcome = starts_armed(&env, &leaky, &canary, v);
            leaky.systemctl(&["stop"])?;
            outcome
        },
    );
    Ok(())
}

/// The documented unit as a careless edit would leave it: the key also in an
/// `Environment=` line, which systemd hands to the daemon's environment.
fn install_leaky_unit<'env>(env: &'env Env, uid: &str, canary: &[u8]) -> Result<Unit<'env>> {
    let documented = documented_unit("systemd-unit")?;
    let secret = String::from_utf8_lossy(canary);
    let leaky = documented.replace(
        "[Service]\n",
        &format!("[Service]\nEnvironment=API_KEY={secret}\n"),
    );
    if leaky == documented {
        bail!("the documented unit has no [Service] section");
    }
    install_unit(env, uid, "dazai-leaky", &leaky)
}

/// Installs `text` as lab's user unit `name` and reloads lab's manager.
fn install_unit<'env>(env: &'env Env, uid: &str, name: &str, text: &str) -> Result<Unit<'env>> {
    let file = env.put(&format!("{name}.service"), text.as_bytes())?;
    as_root(
        env,
        &format!(
            "install -o lab -g lab -m 644 {file} /home/lab/.config/systemd/user/{name}.service"
        ),
    )?;
    let unit = Unit::of_lab(env, uid, name);
    unit.systemctl(&["daemon-reload"])?;
    Ok(unit)
}

/// Waits for `systemctl is-system-running --wait` to answer (until systemd
/// has made its socket, systemctl cannot reach it at all); returns its state.
fn wait_until_booted(env: &Env) -> Result<String> {
    let state = wait_for("systemd (PID 1) to finish booting", BOOT_PATIENCE, || {
        let is_running = ["systemctl", "is-system-running", "--wait"];
        let booted = env
            .exec_with_env("root", &is_running, &[], BOOT_PATIENCE)
            .ok()?;
        let state = booted.stdout.trim().to_owned();
        // "offline": systemctl could not reach PID 1 yet (under load its
        // socket comes late); "starting": still booting. Neither is an answer.
        (!matches!(state.as_str(), "" | "starting" | "offline")).then_some(state)
    })?;
    if !matches!(state.as_str(), "running" | "degraded") {
        let failed = env.exec("root", &["systemctl", "--failed", "--no-legend"])?;
        bail!(
            "systemd came up {state:?}; failed units: {}",
            failed.stdout.trim()
        );
    }
    Ok(state)
}

/// What systemd says of `unit` and of the jobs it has not finished: why a
/// unit did not come up.
fn systemd_said(env: &Env, unit: &str) -> String {
    format!(
        "`systemctl status {unit}`: {}; `systemctl list-jobs`: {}",
        said(
            env,
            &["systemctl", "status", unit, "--no-pager", "--lines=15"],
            usize::MAX
        ),
        said(env, &["systemctl", "list-jobs", "--no-pager"], usize::MAX)
    )
}

/// How long systemd took to start `unit`, from its own timestamps (the
/// user manager's start is bounded by systemd's default start timeout).
fn start_duration(env: &Env, unit: &str) -> String {
    let shown = env.exec(
        "root",
        &[
            "systemctl",
            "show",
            unit,
            "--property=InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic,TimeoutStartUSec",
        ],
    );
    let Ok(shown) = shown else {
        return "its start time unknown".to_owned();
    };
    let property = |name: &str| {
        shown
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("?")
            .to_owned()
    };
    let micros = |name: &str| property(name).parse::<u64>().ok();
    match (
        micros("InactiveExitTimestampMonotonic"),
        micros("ActiveEnterTimestampMonotonic"),
    ) {
        (Some(left), Some(entered)) if entered >= left => format!(
            "started in {:.1} s (start timeout {})",
            (entered - left) as f64 / 1e6,
            property("TimeoutStartUSec")
        ),
        _ => format!("its start time unknown: {}", shown.stdout.trim()),
    }
}

/// `systemd-analyze time`'s account of the boot, and its slowest units.
fn startup_time(env: &Env) -> String {
    format!(
        "{}; slowest: {}",
        said(env, &["systemd-analyze", "time"], 4),
        said(env, &["systemd-analyze", "blame", "--no-pager"], 4)
    )
}

/// The first `lines` non-empty lines `argv` printed (stdout, then
/// stderr), on one line; or why it could not run.
fn said(env: &Env, argv: &[&str], lines: usize) -> String {
    match env.exec("root", argv) {
        Ok(ran) => format!("{}\n{}", ran.stdout, ran.stderr)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .take(lines)
            .collect::<Vec<_>>()
            .join(" / "),
        Err(error) => format!("({error:#})"),
    }
}

/// One of the documented units, and the manager that runs it.
struct Unit<'env> {
    env: &'env Env,
    /// The unit's name in lab's user manager.
    name: String,
    /// The user manager's `XDG_RUNTIME_DIR`.
    runtime_dir: String,
    socket: String,
}

impl<'env> Unit<'env> {
    /// The unit `name` of lab (uid `uid`).
    fn of_lab(env: &'env Env, uid: &str, name: &str) -> Self {
        let runtime_dir = format!("/run/user/{uid}");
        Self {
            env,
            name: name.to_owned(),
            socket: format!("{runtime_dir}/dazai/dazai.sock"),
            runtime_dir,
        }
    }

    /// `systemctl --user VERB… UNIT` as lab.
    fn systemctl(&self, verb: &[&str]) -> Result<Ran> {
        let mut argv = vec!["systemctl", "--user"];
        argv.extend_from_slice(verb);
        argv.push(&self.name);
        let runtime_dir = [("XDG_RUNTIME_DIR", self.runtime_dir.as_str())];
        self.env.exec_with_env("lab", &argv, &runtime_dir, PATIENCE)
    }

    /// `KEY=value …` of `systemctl --user show` for `properties`.
    fn show(&self, properties: &str) -> Result<String> {
        let shown = self.systemctl(&["show", "--property", properties])?;
        Ok(shown
            .stdout
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "))
    }

    fn status(&self) -> Result<Value> {
        let argv = [
            "/lab/bin/dazai",
            "status",
            "--json",
            "--socket",
            &self.socket,
        ];
        let ran = self.env.exec("lab", &argv)?;
        serde_json::from_str(ran.stdout.trim())
            .with_context(|| format!("dazai status: {} {}", ran.stdout, ran.stderr))
    }

    fn main_pid(&self) -> Result<i32> {
        let shown = self.systemctl(&["show", "--property", "MainPID", "--value"])?;
        shown.stdout.trim().parse().context("the unit's MainPID")
    }
}

/// Starts `unit`: it must hold the canary's length from its credential,
/// sealed, with no copy in its environment, and be armed by a heartbeat.
fn starts_armed(env: &Env, unit: &Unit<'_>, canary: &[u8], v: &mut Verdict) -> Result<()> {
    let started = unit.systemctl(&["start"])?;
    v.require(
        started.code == Some(0),
        format!(
            "`systemctl --user start {}`: exit {:?} {}",
            unit.name,
            started.code,
            started.stderr.trim()
        ),
    );
    // Type=exec: `start` returns once the daemon runs, maybe before it binds.
    let status = wait_for("the daemon to answer on its socket", PATIENCE, || {
        unit.status().ok()
    })?;
    let secret = &status["secrets"][0];
    v.require(
        secret["name"] == "api" && secret["bytes"] == canary.len(),
        format!(
            "the daemon holds {} ({} bytes) from the credential; the canary has {}",
            secret["name"],
            secret["bytes"],
            canary.len()
        ),
    );
    v.require(
        status["seccomp"]
            .as_str()
            .is_some_and(|s| s.starts_with("on")),
        format!("seccomp: {}", status["seccomp"]),
    );
    let pid = unit.main_pid()?;
    env.note_daemon(pid)?;
    let environ = env.exec("root", &["cat", &format!("/proc/{pid}/environ")])?;
    v.require(
        !contains(environ.stdout.as_bytes(), canary),
        format!("no copy of the secret in the environment of the daemon (pid {pid})"),
    );
    let client = ["/lab/bin/dazai", "client", "--socket", &unit.socket];
    let _client = env.launch("lab", &format!("client-{}", unit.name), None, &client)?;
    let armed = wait_for("the heartbeat to arm the daemon", PATIENCE, || {
        let status = unit.status().ok()?;
        (status["liveness"] == "attached").then_some(status)
    })?;
    v.require(
        armed["armed"] == true,
        format!(
            "with `dazai client` attached: {}, armed {}",
            armed["liveness"], armed["armed"]
        ),
    );
    v.figure(format!(
        "{} bytes from the credential, armed",
        secret["bytes"]
    ));
    Ok(())
}

/// Stops `unit`: systemd must see the daemon exit 0 (its clean shutdown, not
/// a death by SIGTERM), its socket and pidfile gone and its last line the wipe.
fn stops_cleanly(env: &Env, unit: &Unit<'_>, v: &mut Verdict) -> Result<()> {
    let pid = unit.main_pid()?;
    let stopped = unit.systemctl(&["stop"])?;
    v.require(
        stopped.code == Some(0),
        format!(
            "`systemctl --user stop {}`: exit {:?} {}",
            unit.name,
            stopped.code,
            stopped.stderr.trim()
        ),
    );
    let shown = unit.show("ActiveState,Result,ExecMainStatus")?;
    v.require(
        ["ActiveState=inactive", "Result=success", "ExecMainStatus=0"]
            .iter()
            .all(|property| shown.contains(property)),
        format!("systemd: {shown}"),
    );
    let directory = unit.socket.trim_end_matches("/dazai.sock");
    let leftover = env.sh(
        "root",
        &format!("ls {directory}/dazai.sock {directory}/dazai.pid 2>/dev/null"),
    )?;
    v.require(
        leftover.stdout.trim().is_empty(),
        format!("socket and pidfile left: {:?}", leftover.stdout.trim()),
    );
    let journal = env.exec(
        "root",
        &[
            "journalctl",
            "--no-pager",
            "--output",
            "cat",
            &format!("_PID={pid}"),
        ],
    )?;
    let last = journal.stdout.lines().last().unwrap_or_default().to_owned();
    v.require(
        last.contains("SIGTERM: clean shutdown; wiped 1 secrets"),
        format!("the daemon's last journal line: {last}"),
    );
    v.note("the wipe of a clean shutdown is observed at its exit_group by the wipe row; this row shows that systemd's stop takes that path");
    v.figure("exit 0, wiped");
    Ok(())
}

/// The documented unit in the docs block `name`, with the lab's binary.
fn documented_unit(name: &str) -> Result<String> {
    let start = USAGE
        .find(&format!("<!-- {name}:"))
        .with_context(|| format!("docs/usage.md has no {name} block"))?;
    let body = USAGE[start..]
        .split_once("```ini\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(unit, _)| unit)
        .with_context(|| format!("the {name} block has no ini fence"))?;
    Ok(body.replace("/usr/local/bin/dazai", "/lab/bin/dazai"))
}

/// As `lab`: the user unit, the credential it loads (the canary) and the
/// executor's tools file; then lingering, which starts lab's user manager.
fn install_for_lab(env: &Env, canary: &[u8]) -> Result<()> {
    let unit = env.put("dazai.service", documented_unit("systemd-unit")?.as_bytes())?;
    let key = env.put("api.key", canary)?;
    let tools = env.put("tools.toml", TOOLS.as_bytes())?;
    let config = "/home/lab/.config";
    as_root(
        env,
        &format!(
            "install -d -o lab -g lab {config} {config}/systemd {config}/systemd/user {config}/dazai
install -o lab -g lab -m 644 {unit} {config}/systemd/user/dazai.service
install -o lab -g lab -m 600 {key} {config}/dazai/api.key
install -o lab -g lab -m 644 {tools} {config}/dazai/tools.toml
rm {key}
loginctl enable-linger lab"
        ),
    )
}

/// The documented unit with the key encrypted by `systemd-creds encrypt`
/// (the machine's key) and loaded by `LoadCredentialEncrypted=`: lab's user
/// manager cannot decrypt it, so the unit must fail before the daemon runs,
/// with systemd's `243/CREDENTIALS`.
fn encrypted_credential_is_refused(
    env: &Env,
    uid: &str,
    canary: &[u8],
    v: &mut Verdict,
) -> Result<()> {
    let unit = documented_unit("systemd-unit")?.replace(
        "LoadCredential=api:%h/.config/dazai/api.key",
        "LoadCredentialEncrypted=api:%h/.config/dazai/api.cred",
    );
    if !unit.contains("LoadCredentialEncrypted=") {
        bail!("the documented unit no longer loads api.key with LoadCredential=");
    }
    let version = env.exec("root", &["systemctl", "--version"])?;
    v.note(version.stdout.lines().next().unwrap_or_default().to_owned());
    let has_creds = env.sh("root", "command -v systemd-creds")?.code == Some(0);
    if !has_creds {
        return encrypted_credential_is_unknown(env, uid, &unit, v);
    }
    let plain = env.put("api.plain", canary)?;
    let credential = "/home/lab/.config/dazai/api.cred";
    as_root(
        env,
        &format!(
            "systemd-creds encrypt --name=api {plain} {credential}
rm {plain}
chown lab:lab {credential}"
        ),
    )?;
    let encrypted = install_unit(env, uid, "dazai-encrypted", &unit)?;
    let started = encrypted.systemctl(&["start"])?;
    let shown = encrypted.show("Result,ExecMainStatus")?;
    v.require(
        started.code != Some(0) && shown.contains("ExecMainStatus=243"),
        format!(
            "`systemctl --user start dazai-encrypted`: exit {:?}; systemd: {shown} (243: CREDENTIALS)",
            started.code
        ),
    );
    v.as_limit();
    v.figure("243/CREDENTIALS");
    Ok(())
}

/// Before systemd 250 (Debian 11's 247) there is no `systemd-creds` and no
/// `LoadCredentialEncrypted=`: systemd ignores the line, so the documented
/// unit with it runs the daemon without its credential, which must refuse
/// to start and say why, rather than run with no secret.
fn encrypted_credential_is_unknown(
    env: &Env,
    uid: &str,
    unit: &str,
    v: &mut Verdict,
) -> Result<()> {
    let encrypted = install_unit(env, uid, "dazai-encrypted", unit)?;
    encrypted.systemctl(&["start"])?;
    let shown = wait_for("the unit to end", PATIENCE, || {
        let shown = encrypted.show("ActiveState,ExecMainStatus").ok()?;
        (!shown.contains("ActiveState=active") && !shown.contains("ActiveState=activating"))
            .then_some(shown)
    })?;
    let said = env.exec(
        "root",
        &[
            "journalctl",
            "--no-pager",
            "--output",
            "cat",
            "_SYSTEMD_USER_UNIT=dazai-encrypted.service",
        ],
    )?;
    v.require(
        !shown.contains("ExecMainStatus=0")
            && said.stdout.contains("CREDENTIALS_DIRECTORY is not set"),
        format!(
            "systemd: {shown}; the daemon said: {}",
            said.stdout.lines().last().unwrap_or_default()
        ),
    );
    v.as_limit();
    v.figure("no LoadCredentialEncrypted= before systemd 250: the daemon refuses to start");
    Ok(())
}

/// Runs `script` as root with `set -e`.
fn as_root(env: &Env, script: &str) -> Result<()> {
    let ran = env.sh("root", &format!("set -e\n{script}"))?;
    if ran.code != Some(0) {
        bail!("as root: {}", ran.stderr.trim());
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
