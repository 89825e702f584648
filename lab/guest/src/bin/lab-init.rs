//! `lab-init`: PID 1 of the lab's VMs, on a real kernel of the architecture
//! under test (no container runtime, no shell needed by the host).
//!
//! In order:
//! 1. mount what a minimal Linux needs (cgroup v2 with the memory controller
//!    handed to child groups) and write the two users (`root`, `lab`);
//! 2. load the kernel modules listed in `/lab/modules` (virtio PCI, 9p,
//!    virtio-serial, virtio-blk for the swap disk: Debian builds them as
//!    modules) and install busybox's applets;
//! 3. mount the host's shares: `/lab/bin` (read-only) and `/lab/work`, and
//!    bring up the network card QEMU forwards the host's SSH port to (sshd
//!    itself starts with an environment that asks for it);
//! 4. fork the agent, which serves the host on the virtio-serial port
//!    `lab.agent` (one JSON request per line, one JSON answer per line),
//!    while PID 1 reaps every orphan and powers off when the agent ends.
//!
//! Requests: `{"exec": [ARGV], "user": "lab"|"root", "env": {..}, "detach": bool,
//! "cgroup": "/sys/fs/cgroup/NAME"}` → `{"code", "signal", "stdout", "stderr"}`
//! (or `{"pid"}` when detached); with `cgroup`, the program starts in that
//! group, as a container's processes start in the container's;
//! `{"hello": true}` → `{"kernel", "arch"}`; `{"set_clock": MS}` sets the
//! clock to MS milliseconds since the epoch and `{"clock": true}` reads it
//! (→ `{"clock": MS}`): latencies the host measures against the VM's records
//! need one clock; `{"reset": true}` kills every
//! process but init and the agent (an environment's end, like a container's);
//! `{"poweroff": true}` ends the VM.
//!
//! A VM booted for systemd (`lab.root=DEVICE` on the kernel command line:
//! Debian's root filesystem with systemd, see `lab::vm_assets`) takes
//! steps 1 and 2, mounts that device with the shares inside it, and hands
//! PID 1 to its systemd, which starts `lab-init` again as a service: not
//! PID 1, it is the agent alone.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{wait, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use serde_json::{json, Value};

/// The virtio-serial port's name (qemu `virtserialport,name=`).
const PORT_NAME: &str = "lab.agent";
/// The uid and gid of `lab`, the daemon's non-root user (as in the container image).
const LAB_UID: u32 = 1000;
/// Where cgroup v2 is mounted; the agent's own group is its root.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The kernel command line's parameter naming the root filesystem to hand
/// PID 1 over to.
const ROOT_PARAMETER: &str = "lab.root=";
/// Where that root filesystem is mounted before the hand-over.
const NEW_ROOT: &str = "/sysroot";
/// Its systemd, which becomes PID 1.
const SYSTEMD: &str = "/lib/systemd/systemd";

fn main() {
    if std::process::id() != 1 {
        // Started by systemd as a service: the agent alone.
        if let Err(error) = serve() {
            eprintln!("lab-init agent: {error:#}");
        }
        power_off();
    }
    if let Err(error) = set_up() {
        eprintln!("lab-init: {error:#}");
        power_off();
    }
    match fork_agent() {
        Ok(agent) => reap_until(agent),
        Err(error) => eprintln!("lab-init: {error:#}"),
    }
    power_off();
}

fn set_up() -> Result<()> {
    mount_system()?;
    if let Some(device) = root_device()? {
        load_modules()?;
        install_busybox()?;
        return hand_over_to_systemd(&device);
    }
    write_users()?;
    load_modules()?;
    install_busybox()?;
    mount_share("bin", "/lab/bin", MsFlags::MS_RDONLY)?;
    mount_share("work", "/lab/work", MsFlags::empty())?;
    bring_up_network()?;
    allow_core_dumps()?;
    Ok(())
}

fn mount_system() -> Result<()> {
    let mounts: [(&str, &str, &str, Option<&str>); 7] = [
        ("proc", "/proc", "proc", None),
        ("sysfs", "/sys", "sysfs", None),
        ("devtmpfs", "/dev", "devtmpfs", None),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            Some("ptmxmode=0666,mode=0620"),
        ),
        ("tmpfs", "/tmp", "tmpfs", Some("mode=1777")),
        ("tmpfs", "/run", "tmpfs", Some("mode=0755")),
        ("cgroup2", CGROUP_ROOT, "cgroup2", None),
    ];
    for (source, target, fstype, data) in mounts {
        fs::create_dir_all(target)?;
        mount(Some(source), target, Some(fstype), MsFlags::empty(), data)
            .with_context(|| format!("mount {fstype} on {target}"))?;
    }
    // rexpect and ssh-like tests open /dev/ptmx.
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    // Child groups may then limit memory (an environment's `.memory()`).
    fs::write(format!("{CGROUP_ROOT}/cgroup.subtree_control"), "+memory")
        .context("enable the memory controller for child cgroups")
}

fn write_users() -> Result<()> {
    fs::create_dir_all("/etc")?;
    fs::write(
        "/etc/passwd",
        format!(
            "root:x:0:0:root:/root:/bin/sh\n\
             lab:x:{LAB_UID}:{LAB_UID}:lab:/home/lab:/bin/sh\n\
             sshd:x:100:65534::/run/sshd:/bin/false\n"
        ),
    )?;
    fs::write(
        "/etc/group",
        format!("root:x:0:\nlab:x:{LAB_UID}:\nnogroup:x:65534:\n"),
    )?;
    // glibc before 2.34 (bullseye's sshd) would look for `compat` without it.
    fs::write(
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\n",
    )?;
    // sshd's privilege separation: its unprivileged child chroots here.
    fs::create_dir_all("/run/sshd")?;
    fs::create_dir_all("/root")?;
    fs::create_dir_all("/home/lab")?;
    nix::unistd::chown("/home/lab", Some(LAB_UID.into()), Some(LAB_UID.into()))?;
    Ok(())
}

fn load_modules() -> Result<()> {
    let list = fs::read_to_string("/lab/modules").context("read /lab/modules")?;
    for module in list.lines().filter(|l| !l.trim().is_empty()) {
        let out = Command::new("/bin/busybox")
            .args(["insmod", module])
            .output()
            .context("run busybox insmod")?;
        if !out.status.success() {
            bail!(
                "insmod {module}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

fn install_busybox() -> Result<()> {
    let status = Command::new("/bin/busybox")
        .args(["--install", "-s", "/bin"])
        .status()?;
    if !status.success() {
        bail!("busybox --install: {status}");
    }
    Ok(())
}

/// QEMU's user network: the guest is 10.0.2.15 and the host's forwarded
/// connections arrive from 10.0.2.2 on the same subnet (no route needed).
fn bring_up_network() -> Result<()> {
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "set", "eth0", "up"],
        &["addr", "add", "10.0.2.15/24", "dev", "eth0"],
    ] {
        let out = Command::new("/bin/busybox")
            .arg("ip")
            .args(args)
            .output()
            .context("run busybox ip")?;
        if !out.status.success() {
            bail!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
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

/// The lab's agent as a unit of the systemd root: started at boot, it
/// serves the host as PID 1's agent does in the lab's own initramfs.
const AGENT_UNIT: &str = "[Unit]
Description=the lab's agent: the host's requests over virtio-serial

[Service]
ExecStart=/lab/bin/lab-init

[Install]
WantedBy=multi-user.target
";

/// Mounts `device` (ext4) with the host's shares inside it, enables the
/// agent's unit there, moves the kernel's file systems over and makes its
/// systemd PID 1 (busybox `switch_root`, which frees the initramfs). The
/// device's writes go to QEMU's snapshot, never to the cached image.
fn hand_over_to_systemd(device: &str) -> Result<()> {
    fs::create_dir_all(NEW_ROOT)?;
    mount(
        Some(device),
        NEW_ROOT,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount {device} on {NEW_ROOT}"))?;
    mount_share("bin", &format!("{NEW_ROOT}/lab/bin"), MsFlags::MS_RDONLY)?;
    mount_share("work", &format!("{NEW_ROOT}/lab/work"), MsFlags::empty())?;
    let units = format!("{NEW_ROOT}/etc/systemd/system");
    fs::write(format!("{units}/lab-agent.service"), AGENT_UNIT)?;
    fs::create_dir_all(format!("{units}/multi-user.target.wants"))?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/lab-agent.service",
        format!("{units}/multi-user.target.wants/lab-agent.service"),
    )?;
    for scratch in ["/tmp", "/run"] {
        nix::mount::umount(scratch).with_context(|| format!("unmount {scratch}"))?;
    }
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

/// Like the containers of the core-dump scenario: a process may dump a core
/// unless it refuses itself (the daemon sets its own limit to 0).
fn allow_core_dumps() -> Result<()> {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    setrlimit(Resource::RLIMIT_CORE, RLIM_INFINITY, RLIM_INFINITY).context("RLIMIT_CORE")
}

fn fork_agent() -> Result<Pid> {
    // SAFETY: PID 1 is single-threaded at this point (no thread was
    // spawned before), so the child may run arbitrary code after fork.
    match unsafe { fork() }.context("fork the agent")? {
        ForkResult::Parent { child } => Ok(child),
        ForkResult::Child => {
            let code = match serve() {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("lab-init agent: {error:#}");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// PID 1's job after set-up: reap orphans (a zombie would look alive to the
/// scenarios), and end the VM when the agent ends.
fn reap_until(agent: Pid) {
    loop {
        match wait() {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) if pid == agent => {
                return
            }
            Ok(_) => {}
            Err(nix::errno::Errno::ECHILD) => return,
            Err(_) => {}
        }
    }
}

fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // reboot only returns on failure; PID 1 must never exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// The agent: answers the host's requests until `poweroff` or the port closes.
fn serve() -> Result<()> {
    let port = agent_port()?;
    // A virtio port opens once (a second open is EBUSY): one file, two handles.
    let mut writer = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .with_context(|| format!("open {}", port.display()))?;
    let reader = BufReader::new(writer.try_clone()?);
    let mut detached: Vec<Child> = Vec::new();
    for line in reader.lines() {
        let line = line?;
        detached.retain_mut(|child| matches!(child.try_wait(), Ok(None)));
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
        let response = handle(&request, &mut detached)
            .unwrap_or_else(|error| json!({ "error": format!("{error:#}") }));
        answer(&mut writer, &response)?;
    }
    Ok(())
}

fn answer(writer: &mut File, response: &Value) -> Result<()> {
    let mut line = serde_json::to_vec(response)?;
    line.push(b'\n');
    writer.write_all(&line).context("write to the agent port")
}

/// Spawns `command` inside `cgroup`: the agent joins the group, forks the
/// child there, and returns to the root group. A child cannot join by
/// itself once it runs as `lab` (moving a process needs write access to the
/// root group's `cgroup.procs`), and joining before the fork leaves no
/// moment at which the child runs outside its group.
fn spawn_in_cgroup(command: &mut Command, cgroup: &str) -> Result<Child> {
    let join = |group: &str| {
        fs::write(
            format!("{group}/cgroup.procs"),
            std::process::id().to_string(),
        )
        .with_context(|| format!("move the agent into {group}"))
    };
    join(cgroup)?;
    let child = command.spawn();
    join(CGROUP_ROOT)?;
    Ok(child?)
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

fn handle(request: &Value, detached: &mut Vec<Child>) -> Result<Value> {
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
        // kill(-1) spares PID 1 and the caller: every process a scenario
        // started ends, as when a container is removed.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        for mut child in detached.drain(..) {
            let _ = child.wait();
        }
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
    // /bin first: busybox's applets in the lab's initramfs; the rest for a
    // systemd root whose /bin and /usr are not merged (Debian 11).
    command.env("PATH", "/bin:/usr/bin:/sbin:/usr/sbin");
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
        Some(cgroup) => spawn_in_cgroup(&mut command, cgroup),
        None => command.spawn().map_err(anyhow::Error::from),
    }
    .with_context(|| format!("spawn {program}"))?;
    if detach {
        let pid = child.id();
        detached.push(child);
        return Ok(json!({ "pid": pid }));
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("run {program}"))?;
    Ok(json!({
        "code": out.status.code(),
        "signal": out.status.signal(),
        "stdout": String::from_utf8_lossy(&out.stdout),
        "stderr": String::from_utf8_lossy(&out.stderr),
    }))
}
