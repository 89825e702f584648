//! The builder scenarios are written with: a [`Lab`] makes environments
//! ([`Env`]): containers on this machine's kernel, or a fresh corner of a
//! lab VM on another kernel and architecture. An `Env` runs daemons, probes,
//! the observer (and, in containers, real SSH sessions), and everything they
//! leave behind is a file in its run directory (shared with the host), read
//! as evidence.
//!
//! ```text
//! let env = lab.env("session").ssh().cap_add("NET_ADMIN").start()?;
//! let daemon = env.daemon().args(&["--ping-timeout", "2"]).start()?;
//! let session = env.ssh_session().pty().command(&daemon.client_command()).spawn()?;
//! ```

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use testcontainers::bollard::models::{HostConfigCgroupnsModeEnum, PortBinding};
use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

use crate::host::{Swapfile, Sysctl};
use crate::vm::{Vm, SWAP_DEVICE, SWAP_DISK_MIB};
use crate::vm_assets::{PYTHON, SSHD};

/// How long any one wait for an effect may take. It bounds a wait; it
/// does not measure anything.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How long a negative control's stand-in is given to show the effect it
/// must not show (a daemon that outlives its session, a child that outlives
/// its supervisor). The product's own such effects came within 113 ms in
/// every leg, VMs included, so a stand-in still silent after 5 s is broken,
/// not slow; waiting the whole `PATIENCE` only cost every VM leg 30 s.
pub const CONTROL_PATIENCE: Duration = Duration::from_secs(5);

/// Where things are inside every environment.
pub const BIN: &str = "/lab/bin";
/// The run directory (bind-mounted, read and written by host and container).
pub const RUN: &str = "/lab/run";
/// The daemons' sockets live below here, each in a directory it creates 0700 for `lab`.
pub const SOCKETS: &str = "/home/lab/sockets";

/// Milliseconds since the epoch: host and containers share the kernel's
/// clock; a VM's is set from the host's ([`Env::clock_uncertainty_ms`]).
pub fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// Polls `probe` until it yields a value or `patience` runs out.
pub fn wait_for<T>(
    what: &str,
    patience: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if started.elapsed() > patience {
            bail!("gave up after {patience:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One leg of the lab: the binaries under test, a host work directory and
/// the machines the environments run on.
pub struct Lab {
    /// Host directory holding `dazai`, `lab-probe`, `lab-observer` (at [`BIN`]).
    pub bin_dir: PathBuf,
    /// The `dazai` of this machine's architecture, for a client on the host
    /// (the heartbeat forwarded over SSH).
    pub host_dazai: PathBuf,
    /// Host scratch directory of this run (a VM sees it at `/lab/work`).
    pub work: PathBuf,
    /// The architecture of the binaries and the kernel: `x86_64`, `aarch64`.
    pub arch: String,
    /// Where the environments run.
    pub machines: Machines,
    /// SHA-256 of `/proc/PID/exe` of every daemon the leg started, taken
    /// inside its environment: the binary that ran, not a file named after it.
    pub daemons_seen: Arc<Mutex<Vec<String>>>,
}

/// Where a leg's environments run.
pub enum Machines {
    /// Containers of the lab image on this machine's kernel, reached by SSH
    /// with the key pair in `ssh_dir` (mounted at `/lab/ssh`).
    Containers {
        /// `name:tag` of the lab image (checked to exist before every start).
        image: String,
        /// The SSH key pair and `authorized_keys`.
        ssh_dir: PathBuf,
    },
    /// One VM, its environments one after the other.
    Vm(Arc<Vm>),
}

impl Lab {
    /// `x86_64 containers`, `aarch64 VM`, `x86_64 VM 5.10 (Debian 11)`: the report's column.
    pub fn leg(&self) -> String {
        match &self.machines {
            Machines::Containers { .. } => format!("{} containers", self.arch),
            Machines::Vm(vm) => vm.booted.leg(&self.arch),
        }
    }

    /// Whether this leg runs in a VM (no container runtime).
    pub fn in_vm(&self) -> bool {
        matches!(self.machines, Machines::Vm(_))
    }

    /// The kernel the environments run on.
    pub fn kernel(&self) -> String {
        match &self.machines {
            Machines::Containers { .. } => crate::host::kernel_release(),
            Machines::Vm(vm) => vm.kernel.clone(),
        }
    }

    /// Swap on for the guard's lifetime: a swapfile of the host for the
    /// containers (they share its kernel), or the VM's swap disk.
    pub fn swap_on(&self) -> Result<Swap> {
        match &self.machines {
            Machines::Containers { .. } => {
                Swapfile::enable(&self.work.join("lab.swap"), SWAP_MIB).map(Swap::Host)
            }
            Machines::Vm(vm) => {
                let enable = format!("mkswap {SWAP_DEVICE} >/dev/null && swapon {SWAP_DEVICE}");
                vm.set_up(
                    &format!("swap on {SWAP_DEVICE}"),
                    &["/bin/sh", "-c", &enable],
                )?;
                Ok(Swap::Vm(Arc::clone(vm)))
            }
        }
    }

    /// An environment to configure.
    pub fn env(&self, name: &str) -> EnvBuilder<'_> {
        EnvBuilder {
            lab: self,
            name: name.to_owned(),
            caps: Vec::new(),
            memory: None,
            ssh: false,
            core_ulimit: false,
            systemd: false,
            unconfined: false,
        }
    }
}

/// The size of the swap [`Lab::swap_on`] turns on (MiB).
pub const SWAP_MIB: u64 = SWAP_DISK_MIB;

/// Swap in use; off again when dropped.
pub enum Swap {
    /// The host's swapfile.
    Host(Swapfile),
    /// The VM's swap disk.
    Vm(Arc<Vm>),
}

impl Drop for Swap {
    fn drop(&mut self) {
        if let Swap::Vm(vm) = self {
            let off = ["swapoff", SWAP_DEVICE];
            if let Err(error) = vm.exec("root", &off, &[], None, PATIENCE) {
                eprintln!("lab: could not turn swap off in the VM: {error:#}");
            }
        }
    }
}

/// A container being configured.
pub struct EnvBuilder<'lab> {
    lab: &'lab Lab,
    name: String,
    caps: Vec<String>,
    memory: Option<(i64, i64)>,
    ssh: bool,
    core_ulimit: bool,
    systemd: bool,
    unconfined: bool,
}

impl<'lab> EnvBuilder<'lab> {
    /// Adds a capability (`SYS_PTRACE` for the observer, `NET_ADMIN` for cuts).
    pub fn cap_add(mut self, cap: &str) -> Self {
        self.caps.push(cap.to_owned());
        self
    }

    /// A cgroup memory limit: `mib` of RAM, `mib_with_swap` of RAM plus swap.
    pub fn memory(mut self, mib: i64, mib_with_swap: i64) -> Self {
        self.memory = Some((mib << 20, mib_with_swap << 20));
        self
    }

    /// Publishes sshd's port on 127.0.0.1 (never on other addresses); in a
    /// VM, starts its sshd behind the port QEMU forwards.
    pub fn ssh(mut self) -> Self {
        self.ssh = true;
        self
    }

    /// systemd as PID 1: in the containers, the systemd image, which needs
    /// `CAP_SYS_ADMIN`, a private cgroup namespace, no seccomp profile and
    /// `/run` on tmpfs. Every VM has it already: it boots Debian's root
    /// filesystem, whose PID 1 is systemd.
    pub fn systemd(mut self) -> Self {
        self.systemd = true;
        self
    }

    /// No seccomp profile of Docker's: the only filter a process in it can
    /// carry is its own (the confinement row's `Seccomp: 2` is the daemon's).
    pub fn unconfined(mut self) -> Self {
        self.unconfined = true;
        self
    }

    /// Lifts the container's default core-size limit of 0.
    pub fn core_dumps(mut self) -> Self {
        self.core_ulimit = true;
        self
    }

    /// Starts the environment: a container, or a fresh corner of the VM.
    pub fn start(self) -> Result<Env> {
        let run_dir = self.lab.work.join(&self.name);
        fs::create_dir_all(&run_dir)?;
        fs::set_permissions(
            &run_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )?;
        match &self.lab.machines {
            Machines::Containers { image, ssh_dir } => {
                self.start_container(image, ssh_dir, run_dir)
            }
            Machines::Vm(vm) => self.start_in_vm(vm, run_dir),
        }
    }

    /// In the VM, an environment is its run directory bound at [`RUN`] and
    /// no process left from the previous one ([`Env`]'s drop resets).
    fn start_in_vm(self, vm: &Arc<Vm>, run_dir: PathBuf) -> Result<Env> {
        let name = &self.name;
        let bind = format!(
            "umount {RUN} 2>/dev/null; rm -rf {SOCKETS}; mkdir -p {RUN} && mount --bind /lab/work/{name} {RUN}"
        );
        vm.set_up(&format!("bind {RUN}"), &["/bin/sh", "-c", &bind])?;
        // Each environment starts on a clock freshly set from the host's.
        vm.set_clock().context("set the VM's clock")?;
        let cgroup = match self.memory {
            Some((memory, with_swap)) => Some(memory_cgroup(vm, name, memory, with_swap)?),
            None => None,
        };
        let env = Env {
            machine: Machine::Vm {
                vm: Arc::clone(vm),
                cgroup,
            },
            run_dir,
            ssh_port: self.ssh.then_some(vm.ssh_port),
            ssh_dir: vm.ssh_dir.clone(),
            daemons_seen: Arc::clone(&self.lab.daemons_seen),
        };
        if self.ssh {
            // Like the container's sshd, it ends with the environment.
            let sshd = env.launch("root", "sshd", None, &[SSHD, "-D", "-e"])?;
            sshd.wait_output("Server listening", PATIENCE)?;
        }
        Ok(env)
    }

    /// Starts the container (the image must exist: no registry lookup).
    fn start_container(self, image: &str, ssh_dir: &Path, run_dir: PathBuf) -> Result<Env> {
        let image = if self.systemd {
            crate::images::systemd_image()
        } else {
            image.to_owned()
        };
        let (repo, tag) = image.split_once(':').context("image is name:tag")?;
        if !crate::images::exists(&image) {
            bail!(
                "image {image} is missing; refusing to start (testcontainers would ask a registry)"
            );
        }
        // Under systemd, sshd is a unit and logs to the journal: the
        // scenario waits for `systemctl is-system-running` instead.
        let ready = if self.systemd {
            WaitFor::Nothing
        } else {
            WaitFor::message_on_stderr("Server listening")
        };
        let image = GenericImage::new(repo, tag)
            .with_wait_for(ready)
            .with_exposed_port(22.tcp());
        let mut request = image
            .with_mount(
                Mount::bind_mount(self.lab.bin_dir.to_string_lossy(), BIN)
                    .with_access_mode(testcontainers::core::AccessMode::ReadOnly),
            )
            .with_mount(Mount::bind_mount(run_dir.to_string_lossy(), RUN))
            .with_mount(
                Mount::bind_mount(ssh_dir.to_string_lossy(), "/lab/ssh")
                    .with_access_mode(testcontainers::core::AccessMode::ReadOnly),
            )
            .with_startup_timeout(PATIENCE);
        // Root needs it in every container to read `/proc/PID/exe` of a
        // non-dumpable daemon of another user (`Env::note_daemon`); it is
        // root's alone, so it changes nothing a row claims of `lab`.
        request = request.with_cap_add("SYS_PTRACE");
        for cap in &self.caps {
            request = request.with_cap_add(cap);
        }
        if self.core_ulimit {
            request = request.with_ulimit("core", -1, Some(-1));
        }
        if self.systemd {
            request = request.with_cap_add("SYS_ADMIN");
        }
        if self.systemd || self.unconfined {
            request = request.with_security_opt("seccomp=unconfined");
        }
        let memory = self.memory;
        let ssh = self.ssh;
        let systemd = self.systemd;
        let request = request.with_host_config_modifier(move |config| {
            if systemd {
                config.init = Some(false);
                config.cgroupns_mode = Some(HostConfigCgroupnsModeEnum::PRIVATE);
                config.tmpfs = Some(
                    [("/run", ""), ("/run/lock", "")]
                        .map(|(path, options)| (path.to_owned(), options.to_owned()))
                        .into(),
                );
            } else {
                // tini as PID 1 reaps whatever the lab leaves behind.
                config.init = Some(true);
            }
            config.publish_all_ports = Some(false);
            let mut bindings = std::collections::HashMap::new();
            if ssh {
                bindings.insert(
                    "22/tcp".to_owned(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: Some(String::new()),
                    }]),
                );
            }
            config.port_bindings = Some(bindings);
            if let Some((memory, with_swap)) = memory {
                config.memory = Some(memory);
                config.memory_swap = Some(with_swap);
            }
        });
        let container = request
            .start()
            .with_context(|| format!("start container {}", self.name))?;
        let ssh_port = if self.ssh {
            Some(container.get_host_port_ipv4(22)?)
        } else {
            None
        };
        Ok(Env {
            machine: Machine::Container(Box::new(container)),
            run_dir,
            ssh_port,
            ssh_dir: ssh_dir.to_path_buf(),
            daemons_seen: Arc::clone(&self.lab.daemons_seen),
        })
    }
}

/// The VM's counterpart of a container's memory limit: the cgroup
/// `/sys/fs/cgroup/NAME` with `memory` bytes of RAM and `with_swap` of RAM
/// plus swap (Docker's `--memory`, `--memory-swap`), which every process of
/// the environment starts in. An earlier environment's group of the same
/// name is reused, its limits written again. A kernel without swap
/// accounting has no `memory.swap.max`: there, only RAM is limited.
fn memory_cgroup(vm: &Vm, name: &str, memory: i64, with_swap: i64) -> Result<String> {
    let cgroup = format!("/sys/fs/cgroup/{name}");
    // Values and path as arguments, never spliced into the script.
    let create = [
        "/bin/sh",
        "-c",
        r#"mkdir -p "$1" && echo "$2" > "$1/memory.max" && { [ ! -e "$1/memory.swap.max" ] || echo "$3" > "$1/memory.swap.max"; }"#,
        "sh",
        &cgroup,
        &memory.to_string(),
        &(with_swap - memory).to_string(),
    ];
    vm.set_up(&format!("create the memory cgroup {cgroup}"), &create)?;
    Ok(cgroup)
}

/// A running environment of the lab.
pub struct Env {
    machine: Machine,
    /// The run directory on the host (at [`RUN`] inside).
    pub run_dir: PathBuf,
    ssh_port: Option<u16>,
    ssh_dir: PathBuf,
    daemons_seen: Arc<Mutex<Vec<String>>>,
}

/// What a `docker exec` printed.
pub struct Ran {
    /// Its exit status code.
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// What an [`Env`] runs on.
enum Machine {
    Container(Box<Container<GenericImage>>),
    Vm {
        vm: Arc<Vm>,
        /// The memory cgroup every process of the environment starts in.
        cgroup: Option<String>,
    },
}

impl Drop for Env {
    fn drop(&mut self) {
        // A container ends with its processes; in the VM they are killed.
        if let Machine::Vm { vm, .. } = &self.machine {
            if let Err(error) = vm.reset() {
                eprintln!("lab: could not reset the VM: {error:#}");
            }
        }
    }
}

impl From<Output> for Ran {
    fn from(out: Output) -> Self {
        Self {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Env {
    /// The container's id (the VM leg has none).
    pub fn container_id(&self) -> Result<&str> {
        match &self.machine {
            Machine::Container(container) => Ok(container.id()),
            Machine::Vm { .. } => bail!("this needs a container; the VM leg has none"),
        }
    }

    /// Runs `argv` as `user` inside, waiting for it.
    pub fn exec(&self, user: &str, argv: &[&str]) -> Result<Ran> {
        self.exec_with_env(user, argv, &[], PATIENCE)
    }

    /// Runs `argv` as `user` inside with `env` added, waiting for it (in
    /// the VM up to `patience`; `docker exec` is not bounded).
    pub fn exec_with_env(
        &self,
        user: &str,
        argv: &[&str],
        env: &[(&str, &str)],
        patience: Duration,
    ) -> Result<Ran> {
        match &self.machine {
            Machine::Container(container) => {
                let mut command = Command::new("docker");
                command.args(["exec", "-u", user]);
                for (key, value) in env {
                    command.arg("-e").arg(format!("{key}={value}"));
                }
                let out = command
                    .arg(container.id())
                    .args(argv)
                    .stdin(Stdio::null())
                    .output()
                    .context("docker exec")?;
                Ok(out.into())
            }
            Machine::Vm { vm, cgroup } => vm.exec(user, argv, env, cgroup.as_deref(), patience),
        }
    }

    /// How far the clock of what runs inside may be from the host's, in
    /// ms: 0 in a container (one kernel, one clock); a VM's clock is set
    /// from the host's when the environment starts, within this bound.
    pub fn clock_uncertainty_ms(&self) -> u128 {
        match &self.machine {
            Machine::Container(_) => 0,
            Machine::Vm { vm, .. } => vm.clock_uncertainty_ms(),
        }
    }

    /// How many OOM kills the kernel counted in the environment's memory
    /// cgroup (a container's, or the VM group of [`EnvBuilder::memory`]):
    /// the kernel's own counter, where its log is a ring buffer that earlier
    /// runs can wrap away.
    pub fn oom_kills(&self) -> Result<u64> {
        let counter_files = match &self.machine {
            Machine::Container(container) => {
                let id = container.id();
                vec![
                    // cgroup v1, docker's cgroupfs driver (these machines)
                    format!("/sys/fs/cgroup/memory/docker/{id}/memory.oom_control"),
                    // cgroup v2, systemd and cgroupfs drivers
                    format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.events"),
                    format!("/sys/fs/cgroup/docker/{id}/memory.events"),
                ]
                .into_iter()
                .filter_map(|path| fs::read_to_string(path).ok())
                .collect()
            }
            Machine::Vm { vm, cgroup } => {
                let cgroup = cgroup
                    .as_deref()
                    .context("the environment has no memory limit")?;
                let events = format!("{cgroup}/memory.events");
                let ran = vm.exec("root", &["cat", &events], &[], None, PATIENCE)?;
                vec![ran.stdout]
            }
        };
        counter_files
            .iter()
            .find_map(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .context("no OOM-kill counter in the environment's memory cgroup")
    }

    /// The kernel's log as root inside sees it (the host's, for containers).
    pub fn kernel_log(&self) -> String {
        let ran = match &self.machine {
            Machine::Container(_) => Command::new("dmesg").output().map(Ran::from).ok(),
            Machine::Vm { vm, .. } => vm.exec("root", &["dmesg"], &[], None, PATIENCE).ok(),
        };
        ran.map(|ran| ran.stdout).unwrap_or_default()
    }

    /// Sets a kernel setting (`/proc/sys/...`) of the kernel the environment
    /// runs on. Containers share the host's: the guard restores it. A VM's
    /// kernel is discarded with the VM, so there is nothing to restore.
    pub fn set_kernel_setting(&self, path: &str, value: &str) -> Result<Option<Sysctl>> {
        match &self.machine {
            Machine::Container(_) => Sysctl::set(path, value).map(Some),
            Machine::Vm { vm, .. } => {
                // The value and path as arguments, never spliced into the script.
                let write = [
                    "/bin/sh",
                    "-c",
                    r#"printf '%s' "$1" > "$2""#,
                    "sh",
                    value,
                    path,
                ];
                vm.set_up(&format!("set {path}"), &write)?;
                Ok(None)
            }
        }
    }

    /// Records the SHA-256 of the binary daemon `pid` runs, read by root
    /// inside through `/proc/PID/exe` (see [`Lab::daemons_seen`]).
    pub fn note_daemon(&self, pid: i32) -> Result<()> {
        let summed = self.exec("root", &["sha256sum", &format!("/proc/{pid}/exe")])?;
        let sha = summed.stdout.split_whitespace().next().unwrap_or_default();
        if summed.code != Some(0) || sha.len() != 64 {
            bail!("sha256sum /proc/{pid}/exe: {}", summed.stderr.trim());
        }
        self.daemons_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(sha.to_owned());
        Ok(())
    }

    /// `sh -c SCRIPT` as `user`.
    pub fn sh(&self, user: &str, script: &str) -> Result<Ran> {
        self.exec(user, &["/bin/sh", "-c", script])
    }

    /// The observer (root, in the container): its last JSON line.
    pub fn observe(&self, args: &[&str]) -> Result<Value> {
        let mut argv = vec!["/lab/bin/lab-observer"];
        argv.extend_from_slice(args);
        let ran = self.exec("root", &argv)?;
        last_json(&ran.stdout)
            .with_context(|| format!("lab-observer {args:?}: {} {}", ran.stdout, ran.stderr))
    }

    /// Root's scan of every readable mapping of the live `pid` for the
    /// canary in `canary_file` (whole, pieces, encoded forms).
    pub fn scan(&self, pid: i32, canary_file: &str) -> Result<lab_guest::procfs::Scan> {
        let found = self.observe(&["scan", &pid.to_string(), canary_file])?;
        serde_json::from_value(found["scan"].clone())
            .with_context(|| format!("observer said: {found}"))
    }

    /// Writes a file into the run directory; returns its path inside the container.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<String> {
        let path = self.run_dir.join(name);
        fs::write(&path, bytes)?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        Ok(format!("{RUN}/{name}"))
    }

    /// Starts `argv` as `user` under `lab-probe launch` (own session; pid,
    /// output and end recorded in the run directory) and waits for its pid.
    pub fn launch(
        &self,
        user: &str,
        name: &str,
        stdin: Option<&str>,
        argv: &[&str],
    ) -> Result<Launched> {
        for suffix in ["pid", "exit", "out", "log"] {
            let _ = fs::remove_file(self.run_dir.join(format!("{name}.{suffix}")));
        }
        let mut launcher = vec!["/lab/bin/lab-probe", "launch", RUN, name];
        if let Some(file) = stdin {
            launcher.extend_from_slice(&["--stdin", file]);
        }
        launcher.push("--");
        launcher.extend_from_slice(argv);
        match &self.machine {
            Machine::Container(container) => {
                let status = Command::new("docker")
                    .args(["exec", "-d", "-u", user, container.id()])
                    .args(&launcher)
                    .status()?;
                if !status.success() {
                    bail!("docker exec -d lab-probe launch {name}: {status}");
                }
            }
            Machine::Vm { vm, cgroup } => vm.spawn_detached(user, &launcher, cgroup.as_deref())?,
        }
        let launched = Launched {
            name: name.to_owned(),
            run_dir: self.run_dir.clone(),
            pid: 0,
        };
        let pid = wait_for(&format!("{name} to start"), PATIENCE, || {
            let text = launched.file("pid")?;
            text.trim().parse().ok()
        })?;
        Ok(Launched { pid, ..launched })
    }

    /// A daemon to configure.
    pub fn daemon(&self) -> DaemonBuilder<'_> {
        DaemonBuilder {
            env: self,
            name: "daemon".to_owned(),
            args: Vec::new(),
            exec: Vec::new(),
            reference: false,
        }
    }

    /// An SSH session from the host to `lab` in this container.
    pub fn ssh_session(&self) -> SshBuilder<'_> {
        SshBuilder {
            env: self,
            pty: false,
            command: None,
            extra: Vec::new(),
        }
    }

    /// The common `ssh` options: key only, no host-key prompt, this container's port.
    fn ssh_command(&self) -> Result<Command> {
        let port = self.ssh_port.context("container started without .ssh()")?;
        let mut command = Command::new("ssh");
        command
            .arg("-i")
            .arg(self.ssh_dir.join("id_ed25519"))
            .args(["-p", &port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "ServerAliveInterval=0",
            ]);
        Ok(command)
    }

    /// Blocks all SSH traffic: iptables in the container's network namespace
    /// (needs `NET_ADMIN`), or the VM's network card's link set down.
    pub fn cut_network(&self) -> Result<()> {
        if let Machine::Vm { vm, .. } = &self.machine {
            return vm.set_link(false);
        }
        let ran = self.sh(
            "root",
            "iptables -I INPUT -p tcp --dport 22 -j DROP && iptables -I OUTPUT -p tcp --sport 22 -j DROP",
        )?;
        if ran.code != Some(0) {
            bail!("iptables DROP failed: {}", ran.stderr.trim());
        }
        Ok(())
    }

    /// Undoes [`cut_network`](Self::cut_network).
    pub fn restore_network(&self) -> Result<()> {
        if let Machine::Vm { vm, .. } = &self.machine {
            return vm.set_link(true);
        }
        self.sh(
            "root",
            "iptables -D INPUT -p tcp --dport 22 -j DROP; iptables -D OUTPUT -p tcp --sport 22 -j DROP",
        )?;
        Ok(())
    }
}

/// A process started by [`Env::launch`].
pub struct Launched {
    /// Its name (prefix of its files in the run directory).
    pub name: String,
    /// Its pid inside the container.
    pub pid: i32,
    run_dir: PathBuf,
}

/// How a launched process ended, as its launcher saw it.
#[derive(Clone, Debug)]
pub struct Ending {
    /// `signal=9`, `exit=0`, …
    pub how: String,
    /// When, in ms since the epoch.
    pub unix_ms: u128,
}

impl Ending {
    /// The signal that ended it, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.how.strip_prefix("signal=")?.parse().ok()
    }
}

impl Launched {
    fn file(&self, suffix: &str) -> Option<String> {
        fs::read_to_string(self.run_dir.join(format!("{}.{suffix}", self.name))).ok()
    }

    /// Its stdout so far.
    pub fn out(&self) -> String {
        self.file("out").unwrap_or_default()
    }

    /// Its stderr so far (the daemon's log).
    pub fn log(&self) -> String {
        self.file("log").unwrap_or_default()
    }

    /// How it ended, if it has.
    pub fn ending(&self) -> Option<Ending> {
        let text = self.file("exit")?;
        let mut how = String::new();
        let mut unix_ms = 0;
        for field in text.split_whitespace() {
            match field.strip_prefix("unix_ms=") {
                Some(ms) => unix_ms = ms.parse().unwrap_or(0),
                None => how = field.to_owned(),
            }
        }
        Some(Ending { how, unix_ms })
    }

    /// Waits for its end.
    pub fn wait_end(&self, patience: Duration) -> Result<Ending> {
        wait_for(&format!("{} to end", self.name), patience, || self.ending())
    }

    /// Waits until its stdout or stderr holds `text`.
    pub fn wait_output(&self, text: &str, patience: Duration) -> Result<()> {
        wait_for(
            &format!("{} to print {text:?}", self.name),
            patience,
            || (self.out().contains(text) || self.log().contains(text)).then_some(()),
        )
        .with_context(|| format!("stdout {:?} log {:?}", self.out(), self.log()))
    }
}

/// A `dazai daemon` to start in an [`Env`], holding a fresh canary secret.
pub struct DaemonBuilder<'env> {
    env: &'env Env,
    name: String,
    args: Vec<String>,
    exec: Vec<String>,
    reference: bool,
}

/// `python3 -m dazai_ref`: the reference's command.
const REFERENCE_COMMAND: [&str; 3] = [PYTHON, "-m", "dazai_ref"];

/// The reference's environment: its package, which `cargo xtask lab` stages
/// in the binaries' directory as `python/dazai_ref`, on its path, and no
/// bytecode written into the read-only share.
const REFERENCE_ENVIRONMENT: [&str; 2] =
    ["PYTHONPATH=/lab/bin/python", "PYTHONDONTWRITEBYTECODE=1"];

impl<'env> DaemonBuilder<'env> {
    /// Names its files in the run directory (default `daemon`).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Adds daemon options.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Supervises `argv` (`--exec`).
    pub fn exec(mut self, argv: &[&str]) -> Self {
        self.exec = argv.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The Python reference daemon (`daemon/python`) instead of the leg's
    /// `dazai`, with the same command line; it is not counted among the
    /// daemons the leg ran (those must all be the leg's `dazai`).
    pub fn reference(mut self) -> Self {
        self.reference = true;
        self
    }

    /// Starts it as `lab` with a fresh canary on stdin and waits for its ready line.
    pub fn start(self) -> Result<Daemon> {
        let canary = fresh_canary();
        let canary_file = self.env.put(&format!("{}.canary", self.name), &canary)?;
        let socket = format!("{SOCKETS}/{}/dazai.sock", self.name);
        let mut argv: Vec<&str> = if self.reference {
            [
                // Debian 11's /bin is not merged with /usr/bin.
                ["/usr/bin/env"].as_slice(),
                &REFERENCE_ENVIRONMENT,
                &REFERENCE_COMMAND,
            ]
            .concat()
        } else {
            vec!["/lab/bin/dazai"]
        };
        argv.extend_from_slice(&["daemon", "--socket", &socket, "--secret", "api=fd:0"]);
        argv.extend(self.args.iter().map(String::as_str));
        if !self.exec.is_empty() {
            argv.push("--exec");
            argv.extend(self.exec.iter().map(String::as_str));
        }
        let process = self
            .env
            .launch("lab", &self.name, Some(&canary_file), &argv)?;
        process.wait_output("dazai daemon ready:", PATIENCE)?;
        if !self.reference {
            self.env.note_daemon(process.pid)?;
        }
        Ok(Daemon {
            process,
            canary,
            canary_file,
            socket,
        })
    }
}

/// A running `dazai daemon` inside a container.
pub struct Daemon {
    /// The process (pid in the container, log, end).
    pub process: Launched,
    /// The secret it holds: a fresh random canary.
    pub canary: Vec<u8>,
    /// The canary's file inside the container (for the observer).
    pub canary_file: String,
    /// Its socket inside the container.
    pub socket: String,
}

impl Daemon {
    /// Its pid inside the container.
    pub fn pid(&self) -> i32 {
        self.process.pid
    }

    /// Its pid as an argument.
    pub fn pid_arg(&self) -> String {
        self.pid().to_string()
    }

    /// Its log.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Its ready line.
    pub fn ready_line(&self) -> String {
        self.process
            .out()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// The `PANIC:` line of its log, once written.
    pub fn panic_line(&self) -> Option<String> {
        self.log()
            .lines()
            .find(|line| line.contains("PANIC:"))
            .map(str::to_owned)
    }

    /// Starts a process as `lab` and registers it with the daemon, so the panic must kill it.
    pub fn register_sleeper(&self, env: &Env, name: &str) -> Result<Launched> {
        let sleeper = env.launch("lab", name, None, &["/bin/sleep", "600"])?;
        let ran = env.exec(
            "lab",
            &[
                "/lab/bin/dazai",
                "register",
                &sleeper.pid.to_string(),
                "--socket",
                &self.socket,
            ],
        )?;
        if ran.code != Some(0) {
            bail!("dazai register failed: {} {}", ran.stdout, ran.stderr);
        }
        Ok(sleeper)
    }

    /// `dazai ARGS... --socket SOCKET` as `lab`, e.g. `status --json`.
    pub fn dazai(&self, env: &Env, args: &[&str]) -> Result<Ran> {
        let mut argv = vec!["/lab/bin/dazai"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--socket", &self.socket]);
        env.exec("lab", &argv)
    }

    /// The shell command that holds this daemon's heartbeat in a session.
    pub fn client_command(&self) -> String {
        format!("/lab/bin/dazai client --socket {}", self.socket)
    }

    /// Waits until the daemon logs that a heartbeat attached.
    pub fn wait_heartbeat(&self, patience: Duration) -> Result<()> {
        self.process.wait_output("heartbeat attached", patience)
    }

    /// Starts `dazai client` as `lab` and waits until its heartbeat arms the
    /// switch (a `GET` is answered only then).
    pub fn attach_client(&self, env: &Env) -> Result<Launched> {
        // Named after the daemon: two daemons' clients never share files.
        let client = env.launch(
            "lab",
            &format!("{}-client", self.process.name),
            None,
            &["/lab/bin/dazai", "client", "--socket", &self.socket],
        )?;
        self.wait_heartbeat(PATIENCE)?;
        Ok(client)
    }
}

/// A random canary: printable, long enough never to occur by chance, and
/// with 8-byte pieces of 48 random bits each, so a scan can look for pieces.
pub fn fresh_canary() -> Vec<u8> {
    let mut random = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut urandom| urandom.read_exact(&mut random))
        .expect("read /dev/urandom for a canary");
    lab_guest::procfs::canary_from(&random)
}

/// An SSH session being configured.
pub struct SshBuilder<'env> {
    env: &'env Env,
    pty: bool,
    command: Option<String>,
    extra: Vec<String>,
}

impl<'env> SshBuilder<'env> {
    /// With a pty (`ssh -tt`).
    pub fn pty(mut self) -> Self {
        self.pty = true;
        self
    }

    /// Runs `command` instead of a login shell.
    pub fn command(mut self, command: &str) -> Self {
        self.command = Some(command.to_owned());
        self
    }

    /// Forwards host UNIX socket `local` to `remote`, no command (`ssh -N -L`).
    pub fn forward_socket(mut self, local: &Path, remote: &str) -> Self {
        self.extra.push("-N".into());
        self.extra.push("-L".into());
        self.extra.push(format!("{}:{remote}", local.display()));
        self
    }

    /// Starts `ssh` on the host; stdin piped (for typing), output to files.
    pub fn spawn(self) -> Result<Child> {
        let mut command = self.env.ssh_command()?;
        command.arg(if self.pty { "-tt" } else { "-T" });
        command.args(&self.extra);
        command.arg("lab@127.0.0.1");
        if let Some(remote) = &self.command {
            command.arg(remote);
        }
        let log = fs::File::create(self.env.run_dir.join("ssh-client.log"))?;
        command
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn ssh")
    }
}

/// The last line of `text` that parses as JSON.
pub fn last_json(text: &str) -> Result<Value> {
    text.lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .context("no JSON line")
}
