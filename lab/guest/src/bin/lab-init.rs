//! `lab-init`: the lab VMs' `/init`, then their agent, on a real kernel of
//! the architecture under test (no container runtime, no shell needed by
//! the host).
//!
//! As `/init` (PID 1 of the initramfs), in order:
//! 1. mount `/proc`, `/sys` and `/dev`, load the kernel modules listed in
//!    `/lab/modules` (virtio PCI, 9p, virtio-serial, virtio-blk for the
//!    swap disk and the root filesystem, virtio-net, ext4: Debian builds
//!    them as modules) and bring up the network card QEMU forwards the
//!    host's SSH port to;
//! 2. mount the root filesystem `lab.root=` names (Debian's, see
//!    `lab::vm_assets`), the host's shares inside it (`/lab/bin` read-only,
//!    `/lab/work`), copy sshd's configuration for this boot into it, and
//!    enable the agent's unit there;
//! 3. move the kernel's file systems over and hand PID 1 to its systemd.
//!
//! Started again by systemd as `lab-agent.service`, it is the agent: it
//! serves the host on the virtio-serial port `lab.agent` (one JSON request
//! per line, one JSON answer per line).
//!
//! Requests: `{"exec": [ARGV], "user": "lab"|"root", "env": {..}, "detach": bool,
//! "cgroup": "/sys/fs/cgroup/NAME"}` → `{"code", "signal", "stdout", "stderr"}`
//! (or `{"pid"}` when detached); with `cgroup`, the program starts in that
//! group, as a container's processes start in the container's; without,
//! in the agent's own;
//! `{"hello": true}` → `{"kernel", "arch"}`; `{"set_clock": MS}` sets the
//! clock to MS milliseconds since the epoch and `{"clock": true}` reads it
//! (→ `{"clock": MS}`): latencies the host measures against the VM's records
//! need one clock; `{"reset": true}` kills every process the agent started
//! and their descendants, every one in the agent's groups (an environment's
//! end, like a container's), and nothing of systemd's;
//! `{"poweroff": true}` ends the VM. An exec with `"patience_ms"` is
//! killed when that has passed. A request's `"id"` comes back in its answer.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// The virtio-serial port's name (qemu `virtserialport,name=`).
const PORT_NAME: &str = "lab.agent";
/// The uid and gid of `lab`, the daemon's non-root user (as in the container image).
const LAB_UID: u32 = 1000;
/// Where systemd mounts cgroup v2.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The kernel command line's parameter naming the root filesystem to hand
/// PID 1 over to.
const ROOT_PARAMETER: &str = "lab.root=";
/// Where that root filesystem is mounted before the hand-over.
const NEW_ROOT: &str = "/sysroot";
/// Its systemd, which becomes PID 1.
const SYSTEMD: &str = "/lib/systemd/systemd";
/// What the host put in the initramfs for this boot and the root
/// filesystem gets at the same paths: sshd's configuration and host key,
/// and the key it accepts for `lab`.
const CARRIED_OVER: [&str; 3] = [
    "/etc/ssh/sshd_config",
    "/etc/ssh/ssh_host_ed25519_key",
    "/lab/ssh/authorized_keys",
];

fn main() {
    if std::process::id() != 1 {
        if let Err(error) = serve() {
            eprintln!("lab-init agent: {error:#}");
        }
        power_off();
    }
    // On success, systemd runs in this process's place.
    if let Err(error) = boot_into_root() {
        eprintln!("lab-init: {error:#}");
    }
    power_off();
}

/// The `/init` steps, top to bottom; returns only on failure.
fn boot_into_root() -> Result<()> {
    mount_kernel_file_systems()?;
    load_modules()?;
    bring_up_network()?;
    let device = root_device()?
        .with_context(|| format!("no {ROOT_PARAMETER} on the kernel command line"))?;
    mount_root(&device)?;
    mount_share("bin", &format!("{NEW_ROOT}/lab/bin"), MsFlags::MS_RDONLY)?;
    mount_share("work", &format!("{NEW_ROOT}/lab/work"), MsFlags::empty())?;
    carry_over_ssh_files()?;
    enable_agent_unit()?;
    hand_over_to_systemd()
}

fn mount_kernel_file_systems() -> Result<()> {
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        fs::create_dir_all(target)?;
        mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mount {fstype} on {target}"))?;
    }
    Ok(())
}

fn load_modules() -> Result<()> {
    let list = fs::read_to_string("/lab/modules").context("read /lab/modules")?;
    for module in list.lines().filter(|l| !l.trim().is_empty()) {
        busybox(&["insmod", module])?;
    }
    Ok(())
}

/// QEMU's user network: the guest is 10.0.2.15 and the host's forwarded
/// connections arrive from 10.0.2.2 on the same subnet (no route needed).
/// The address outlives the hand-over: no unit of the root filesystem
/// manages the card (`net.ifnames=0` keeps udev from renaming it).
fn bring_up_network() -> Result<()> {
    for args in [
        &["ip", "link", "set", "lo", "up"][..],
        &["ip", "link", "set", "eth0", "up"],
        &["ip", "addr", "add", "10.0.2.15/24", "dev", "eth0"],
    ] {
        busybox(args)?;
    }
    Ok(())
}

/// Runs a busybox applet of the initramfs; a failure names it with its stderr.
fn busybox(args: &[&str]) -> Result<()> {
    let out = Command::new("/bin/busybox")
        .args(args)
        .output()
        .context("run /bin/busybox")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The device `lab.root=` names, if the kernel command line has it.
fn root_device() -> Result<Option<String>> {
    let cmdline = fs::read_to_string("/proc/cmdline").context("read /proc/cmdline")?;
    Ok(cmdline
        .split_whitespace()
        .find_map(|parameter| parameter.strip_prefix(ROOT_PARAMETER))
        .map(str::to_owned))
}

/// Mounts `device` (ext4, read-write: its writes go to QEMU's snapshot,
/// never to the cached image) on [`NEW_ROOT`].
fn mount_root(device: &str) -> Result<()> {
    fs::create_dir_all(NEW_ROOT)?;
    mount(
        Some(device),
        NEW_ROOT,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount {device} on {NEW_ROOT}"))
}

fn mount_share(tag: &str, target: &str, flags: MsFlags) -> Result<()> {
    fs::create_dir_all(target)?;
    mount(
        Some(tag),
        target,
        Some("9p"),
        flags,
        Some("trans=virtio,version=9p2000.L,msize=262144"),
    )
    .with_context(|| format!("mount the 9p share {tag} on {target}"))
}

fn carry_over_ssh_files() -> Result<()> {
    for path in CARRIED_OVER {
        let to = format!("{NEW_ROOT}{path}");
        if let Some(dir) = std::path::Path::new(&to).parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(path, &to).with_context(|| format!("copy {path} into {NEW_ROOT}"))?;
    }
    Ok(())
}

/// The lab's agent as a unit of the root filesystem, started at boot.
/// `LimitCORE=infinity`, inherited by what it starts: as in the containers
/// of the core-dump row, a process may dump a core unless it refuses
/// itself (the daemon sets its own limit to 0).
const AGENT_UNIT: &str = "[Unit]
Description=the lab's agent: the host's requests over virtio-serial

[Service]
ExecStart=/lab/bin/lab-init
LimitCORE=infinity

[Install]
WantedBy=multi-user.target
";

fn enable_agent_unit() -> Result<()> {
    let units = format!("{NEW_ROOT}/etc/systemd/system");
    fs::write(format!("{units}/lab-agent.service"), AGENT_UNIT)?;
    fs::create_dir_all(format!("{units}/multi-user.target.wants"))?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/lab-agent.service",
        format!("{units}/multi-user.target.wants/lab-agent.service"),
    )
    .context("enable lab-agent.service")
}

/// Moves the kernel's file systems into [`NEW_ROOT`] and makes its systemd
/// PID 1 (busybox `switch_root`, which frees the initramfs).
fn hand_over_to_systemd() -> Result<()> {
    for kernel_fs in ["/dev", "/proc", "/sys"] {
        mount(
            Some(kernel_fs),
            format!("{NEW_ROOT}{kernel_fs}").as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .with_context(|| format!("move {kernel_fs} into {NEW_ROOT}"))?;
    }
    let error = Command::new("/bin/busybox")
        .args(["switch_root", NEW_ROOT, SYSTEMD])
        .exec();
    Err(error).context("exec busybox switch_root")
}

fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // reboot only returns on failure; PID 1 must never exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// What the agent keeps between requests.
struct Agent {
    /// The agent's own cgroup, where what it starts without one runs.
    own_cgroup: String,
    /// Every group it started a process in: what a reset empties.
    cgroups: BTreeSet<String>,
    /// Its detached children, reaped as they end and at a reset.
    detached: Vec<Child>,
}

/// The agent: answers the host's requests until `poweroff` or the port closes.
fn serve() -> Result<()> {
    let mut agent = Agent::start()?;
    let port = agent_port()?;
    // A virtio port opens once (a second open is EBUSY): one file, two handles.
    let mut writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .with_context(|| format!("open {}", port.display()))?;
    let reader = BufReader::new(writer.try_clone()?);
    for line in reader.lines() {
        let line = line?;
        agent
            .detached
            .retain_mut(|child| matches!(child.try_wait(), Ok(None)));
        let request: Value = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(error) => {
                answer(
                    &mut writer,
                    &json!({ "error": format!("not JSON: {error}") }),
                )?;
                continue;
            }
        };
        if request.get("poweroff").is_some() {
            answer(&mut writer, &json!({ "poweroff": true }))?;
            return Ok(());
        }
        let mut response = agent
            .handle(&request)
            .unwrap_or_else(|error| json!({ "error": format!("{error:#}") }));
        // The host matches answers to requests by it: one it gave up
        // waiting for is not taken for the next one's.
        response["id"] = request["id"].clone();
        answer(&mut writer, &response)?;
    }
    Ok(())
}

fn answer(writer: &mut File, response: &Value) -> Result<()> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    writer.write_all(&line).context("write to the agent port")
}

/// Waits for `child` and its output; after `patience_ms`, if given, kills
/// it (the host has given up on it by then, and the agent serves one
/// request at a time).
fn wait_at_most(child: Child, patience_ms: Option<u64>) -> std::io::Result<std::process::Output> {
    let pid = Pid::from_raw(child.id() as i32);
    let (done, finished) = std::sync::mpsc::channel::<()>();
    if let Some(ms) = patience_ms {
        std::thread::spawn(move || {
            if finished.recv_timeout(Duration::from_millis(ms)).is_err() {
                let _ = kill(pid, Signal::SIGKILL);
            }
        });
    }
    let out = child.wait_with_output();
    let _ = done.send(());
    out
}

/// `/dev/vportNpM` of the port named [`PORT_NAME`].
fn agent_port() -> Result<PathBuf> {
    for entry in fs::read_dir("/sys/class/virtio-ports").context("no virtio-serial ports")? {
        let entry = entry?;
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Ok(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    bail!("no virtio-serial port named {PORT_NAME}")
}

/// The cgroup v2 directory of this process (`0::/system.slice/…` in
/// `/proc/self/cgroup`).
fn own_cgroup() -> Result<String> {
    let text = fs::read_to_string("/proc/self/cgroup").context("read /proc/self/cgroup")?;
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .context("no cgroup v2 line in /proc/self/cgroup")?;
    Ok(format!("{CGROUP_ROOT}{path}"))
}

/// SIGKILLs every process of `cgroup` but the caller, until none is left
/// (a process forked meanwhile is in the group too, and killed next round).
fn empty_cgroup(cgroup: &str) -> Result<()> {
    let me = std::process::id().to_string();
    for _ in 0..500 {
        let procs = fs::read_to_string(format!("{cgroup}/cgroup.procs"))
            .with_context(|| format!("read {cgroup}/cgroup.procs"))?;
        let others: Vec<i32> = procs
            .lines()
            .filter(|pid| *pid != me)
            .filter_map(|pid| pid.parse().ok())
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        for pid in others {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("processes of {cgroup} outlived 5 s of SIGKILL")
}

impl Agent {
    /// What systemd does not do for the lab's environments: the directory
    /// sshd's privilege separation needs (Debian's unit, masked, would make
    /// it) and the memory controller for the groups environments make.
    fn start() -> Result<Agent> {
        fs::create_dir_all("/run/sshd")?;
        fs::write(format!("{CGROUP_ROOT}/cgroup.subtree_control"), "+memory")
            .context("enable the memory controller for child cgroups")?;
        Ok(Agent {
            own_cgroup: own_cgroup()?,
            cgroups: BTreeSet::new(),
            detached: Vec::new(),
        })
    }

    /// Spawns `command` inside `cgroup`: the agent joins the group, forks
    /// the child there, and returns to its own. A child cannot join by
    /// itself once it runs as `lab` (moving a process needs write access to
    /// the common ancestor's `cgroup.procs`), and joining before the fork
    /// leaves no moment at which the child runs outside its group.
    fn spawn_in_cgroup(&mut self, command: &mut Command, cgroup: &str) -> Result<Child> {
        let join = |group: &str| {
            fs::write(
                format!("{group}/cgroup.procs"),
                std::process::id().to_string(),
            )
            .with_context(|| format!("move the agent into {group}"))
        };
        self.cgroups.insert(cgroup.to_owned());
        join(cgroup)?;
        let child = command.spawn();
        join(&self.own_cgroup)?;
        Ok(child?)
    }

    /// Kills what the agent started, wherever it ran, and reaps its own children.
    fn reset(&mut self) -> Result<()> {
        empty_cgroup(&self.own_cgroup)?;
        for cgroup in &self.cgroups {
            empty_cgroup(cgroup)?;
        }
        for mut child in self.detached.drain(..) {
            let _ = child.wait();
        }
        Ok(())
    }

    fn handle(&mut self, request: &Value) -> Result<Value> {
        if request.get("hello").is_some() {
            let uname = nix::sys::utsname::uname()?;
            return Ok(json!({
                "kernel": uname.release().to_string_lossy(),
                "arch": uname.machine().to_string_lossy(),
            }));
        }
        if let Some(ms) = request.get("set_clock") {
            let ms = ms.as_u64().context("set_clock takes milliseconds")?;
            let now = nix::sys::time::TimeSpec::from(std::time::Duration::from_millis(ms));
            nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, now)
                .context("clock_settime")?;
        }
        if request.get("set_clock").is_some() || request.get("clock").is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            return Ok(json!({ "clock": now.as_millis() as u64 }));
        }
        if request.get("reset").is_some() {
            self.reset()?;
            return Ok(json!({ "reset": true }));
        }
        let argv: Vec<String> = serde_json::from_value(
            request
                .get("exec")
                .cloned()
                .context("a request is exec, hello, reset or poweroff")?,
        )?;
        let (program, args) = argv.split_first().context("exec needs a program")?;
        let mut command = Command::new(program);
        command.args(args).env_clear().stdin(Stdio::null());
        // Debian 11's /bin and /usr are not merged.
        command.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        match request["user"].as_str().unwrap_or("root") {
            "root" => command.env("HOME", "/root").env("USER", "root"),
            "lab" => command
                .uid(LAB_UID)
                .gid(LAB_UID)
                .env("HOME", "/home/lab")
                .env("USER", "lab"),
            other => bail!("unknown user {other}"),
        };
        let extra: HashMap<String, String> =
            serde_json::from_value(request.get("env").cloned().unwrap_or(json!({})))?;
        command.envs(extra);
        let detach = request["detach"].as_bool().unwrap_or(false);
        if detach {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        } else {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let child = match request["cgroup"].as_str() {
            Some(cgroup) => self.spawn_in_cgroup(&mut command, cgroup),
            None => command.spawn().map_err(anyhow::Error::from),
        }
        .with_context(|| format!("spawn {program}"))?;
        if detach {
            let pid = child.id();
            self.detached.push(child);
            return Ok(json!({ "pid": pid }));
        }
        let out = wait_at_most(child, request["patience_ms"].as_u64())
            .with_context(|| format!("run {program}"))?;
        Ok(json!({
            "code": out.status.code(),
            "signal": out.status.signal(),
            "stdout": String::from_utf8_lossy(&out.stdout),
            "stderr": String::from_utf8_lossy(&out.stderr),
        }))
    }
}
