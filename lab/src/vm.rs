//! A lab VM: a Debian kernel of the architecture under test, booted by
//! qemu-system under TCG into Debian's root filesystem of the same
//! architecture and release, whose PID 1 is its systemd (`lab-init`, the
//! initramfs's `/init`, mounts it and hands over). The host reaches it
//! through two channels only: a virtio-serial port on which `lab-init`'s
//! agent, a systemd service, runs commands, and two 9p shares (`/lab/bin`
//! read-only, `/lab/work`) where the evidence files land, exactly as in a
//! container's bind mounts. Its disks: `/dev/vda`, blank, the swap row's
//! swap device; `/dev/vdb`, the root filesystem, whose writes stay in a QEMU
//! snapshot. Its one network card is on QEMU's user network, which reaches
//! nothing but forwards a port of the host's 127.0.0.1 to the VM's sshd.
//! The QEMU monitor cuts that card's link for the session loss row
//! (`set_link`), as a cable pulled out.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::env::{unix_ms, wait_for, Ran, PATIENCE};
use crate::host::run;
use crate::vm_assets::{write_initramfs, DebianRelease, Entry, VmArch, VmAssets};

/// How long a TCG boot may take, to the agent's start in systemd's
/// `multi-user.target`, before the lab gives up on the VM.
const BOOT_PATIENCE: Duration = Duration::from_secs(180);
/// The size of the VM's swap disk (sparse on the host until swapped to).
pub const SWAP_DISK_MIB: u64 = 512;
/// Where the swap disk is inside the VM: its first disk.
pub const SWAP_DEVICE: &str = "/dev/vda";
/// Where the VM has its root filesystem: its second disk.
const ROOT_DEVICE: &str = "/dev/vdb";

/// What a VM leg boots: a Debian release's kernel, and whether its command
/// line turns `memfd_secret` on (`secretmem.enable=1`): 6.1 leaves it off
/// unless asked, as a user's unconfigured Debian 12 does; 6.5 and later
/// have it on; 5.10 has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmKernel {
    /// The release the kernel comes from.
    pub release: DebianRelease,
    /// `secretmem.enable=1` on the kernel command line.
    pub secretmem_enable: bool,
}

impl VmKernel {
    /// Every kernel a VM leg can boot, the default one first.
    pub const ALL: [VmKernel; 4] = [
        VmKernel::of(DebianRelease::Bookworm),
        VmKernel::of(DebianRelease::Bullseye),
        VmKernel::of(DebianRelease::Trixie),
        VmKernel {
            release: DebianRelease::Bookworm,
            secretmem_enable: false,
        },
    ];

    /// `release`'s kernel with `secretmem.enable=1`.
    const fn of(release: DebianRelease) -> VmKernel {
        VmKernel {
            release,
            secretmem_enable: true,
        }
    }

    /// As `--kernel` names it: `6.1`, `5.10`, `6.12`, `6.1-secretmem-off`.
    pub fn series(self) -> String {
        let series = self.release.kernel_series();
        if self.secretmem_enable {
            series.to_owned()
        } else {
            format!("{series}-secretmem-off")
        }
    }

    /// The leg's name in the report: `x86_64 VM` (Debian 12's 6.1, the
    /// default), `aarch64 VM 5.10 (Debian 11)`, `x86_64 VM 6.1 secretmem off (Debian 12)`.
    pub fn leg(self, arch: &str) -> String {
        if self == VmKernel::ALL[0] {
            return format!("{arch} VM");
        }
        let series = self.release.kernel_series();
        let off = if self.secretmem_enable {
            ""
        } else {
            " secretmem off"
        };
        format!("{arch} VM {series}{off} ({})", self.release.name())
    }
}

/// A running lab VM.
pub struct Vm {
    /// Its architecture.
    pub arch: VmArch,
    /// `uname -r` inside it.
    pub kernel: String,
    /// What it booted.
    pub booted: VmKernel,
    /// The Debian package the kernel came from.
    pub kernel_package: String,
    /// Everything the VM printed on its serial console.
    pub console_log: PathBuf,
    /// The host's 127.0.0.1 port forwarded to the VM's port 22.
    pub ssh_port: u16,
    /// The SSH key pair whose public key the VM's sshd accepts for `lab`.
    pub ssh_dir: PathBuf,
    /// How far the VM's clock may be from the host's, in ms, since it was
    /// last set from the host's (at boot and at each environment's start):
    /// an end the VM records is compared with a moment the host took
    /// (session loss latencies).
    clock_uncertainty_ms: std::sync::atomic::AtomicU64,
    /// QEMU's human monitor (HMP) socket.
    monitor: PathBuf,
    qemu: Mutex<Child>,
    agent: Mutex<Agent>,
}

struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The id of the last request sent.
    last_id: u64,
    /// What was read of an answer line not yet complete when a wait ended.
    partial: Vec<u8>,
}

impl Vm {
    /// Boots `assets`' kernel with an initramfs holding `init` as `/init`,
    /// into `assets`' root filesystem; shares `bin_dir` at `/lab/bin` and
    /// `work` at `/lab/work`; its sshd accepts the key of `ssh_dir` (at
    /// `/lab/ssh`, as in the containers).
    pub fn boot(
        booted: VmKernel,
        assets: &VmAssets,
        init: &Path,
        bin_dir: &Path,
        work: &Path,
        ssh_dir: &Path,
    ) -> Result<Vm> {
        let dir = work.join(format!("vm-{}", assets.arch.rust_arch()));
        fs::create_dir_all(&dir)?;
        let initrd = dir.join("initrd.cpio");
        let mut entries = initramfs_entries(assets, init, &dir)?;
        entries.extend(ssh_entries(ssh_dir, &dir)?);
        write_initramfs(&initrd, &with_directories(entries))?;
        let ssh_port = free_local_port()?;
        let monitor = dir.join("monitor.sock");
        let _ = fs::remove_file(&monitor);
        let socket = dir.join("agent.sock");
        let console_log = dir.join("console.log");
        let swap_disk = dir.join("swap.img");
        fs::File::create(&swap_disk)
            .and_then(|disk| disk.set_len(SWAP_DISK_MIB << 20))
            .with_context(|| format!("create {}", swap_disk.display()))?;
        let _ = fs::remove_file(&socket);
        // net.ifnames=0: the card keeps the name eth0 lab-init gave its
        // address, and udev does not try to rename it under systemd.
        let mut append = format!(
            "console={} panic=-1 quiet net.ifnames=0 lab.root={ROOT_DEVICE}",
            assets.arch.console()
        );
        if booted.secretmem_enable {
            append.push_str(" secretmem.enable=1");
        }
        let qemu = Command::new(assets.arch.qemu_system())
            .args(assets.arch.machine_args())
            .arg("-kernel")
            .arg(&assets.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=bin,security_model=none,readonly=on,id=bin",
                bin_dir.display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=work,security_model=none,id=work",
                work.display()
            ))
            .args(["-device", "virtio-serial-pci", "-chardev"])
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=on",
                socket.display()
            ))
            .args(["-device", "virtserialport,chardev=agent,name=lab.agent"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=swap,cache=unsafe",
                swap_disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=swap"])
            // The second disk: the root filesystem, its writes in a snapshot.
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=root,snapshot=on,cache=unsafe",
                assets.root.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=root"])
            // restrict=on: the guest reaches nothing; forwards still work.
            .arg("-netdev")
            .arg(format!(
                "user,id={NIC},restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
            ))
            .args(["-device", &format!("virtio-net-pci,netdev={NIC}")])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&console_log)?)
            .stderr(fs::File::create(dir.join("qemu.log"))?)
            .spawn()
            .with_context(|| format!("start {}", assets.arch.qemu_system()))?;
        let qemu = Mutex::new(qemu);
        // qemu waits for this connection before it starts the guest.
        let stream = wait_for("qemu's agent socket", PATIENCE, || {
            UnixStream::connect(&socket).ok()
        })
        .with_context(|| qemu_said(&dir))?;
        let agent = Agent {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            last_id: 0,
            partial: Vec::new(),
        };
        let mut vm = Vm {
            arch: assets.arch,
            kernel: String::new(),
            booted,
            kernel_package: assets.kernel_package.clone(),
            console_log,
            ssh_port,
            ssh_dir: ssh_dir.to_path_buf(),
            clock_uncertainty_ms: Default::default(),
            monitor,
            qemu,
            agent: Mutex::new(agent),
        };
        let hello = vm
            .request(&json!({ "hello": true }), BOOT_PATIENCE)
            .context("the VM did not come up")?;
        vm.kernel = hello["kernel"].as_str().unwrap_or_default().to_owned();
        vm.set_clock().context("set the VM's clock")?;
        if hello["arch"] != assets.arch.rust_arch() {
            bail!(
                "the VM says it is {}, not {}",
                hello["arch"],
                assets.arch.rust_arch()
            );
        }
        Ok(vm)
    }

    /// Sends one request to the agent and waits up to `patience` for its
    /// answer. The agent serves one request at a time: a request given up
    /// on still gets its answer later, which the next request skips (every
    /// request carries an id its answer repeats).
    pub fn request(&self, request: &Value, patience: Duration) -> Result<Value> {
        let mut agent = self.agent.lock().expect("agent lock");
        agent.last_id += 1;
        let id = agent.last_id;
        let mut request = request.clone();
        request["id"] = json!(id);
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        agent
            .writer
            .write_all(&line)
            .context("write to the VM agent")?;
        let deadline = std::time::Instant::now() + patience;
        let answer = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // A zero timeout would mean none.
            let left = left.max(Duration::from_millis(1));
            agent.reader.get_ref().set_read_timeout(Some(left))?;
            let Agent {
                reader, partial, ..
            } = &mut *agent;
            match reader.read_until(b'\n', partial) {
                Ok(0) => bail!("the VM went away; {}", self.console_tail()),
                Ok(_) if !partial.ends_with(b"\n") => continue,
                Ok(_) => {}
                Err(error) => {
                    return Err(error).with_context(|| {
                        format!(
                            "no answer from the VM within {patience:?}; {}",
                            self.console_tail()
                        )
                    })
                }
            }
            let line = std::mem::take(&mut agent.partial);
            let answer: Value = serde_json::from_slice(&line).context("agent answer")?;
            if answer["id"] == json!(id) {
                break answer;
            }
        };
        if let Some(error) = answer.get("error") {
            bail!("VM agent: {}", error.as_str().unwrap_or_default());
        }
        Ok(answer)
    }

    /// Runs `argv` as root to set the VM up; a non-zero exit is an error
    /// naming `what` and carrying the command's stderr.
    pub fn set_up(&self, what: &str, argv: &[&str]) -> Result<Ran> {
        let ran = self.exec("root", argv, &[], None, PATIENCE)?;
        if ran.code != Some(0) {
            bail!("{what} in the VM: {}", ran.stderr.trim());
        }
        Ok(ran)
    }

    /// Runs `argv` as `user` in the VM, in `cgroup` if given, and waits
    /// for it (up to `patience`).
    pub fn exec(
        &self,
        user: &str,
        argv: &[&str],
        env: &[(&str, &str)],
        cgroup: Option<&str>,
        patience: Duration,
    ) -> Result<Ran> {
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        // The agent ends the command when the lab stops waiting for it.
        let patience_ms = u64::try_from(patience.as_millis()).unwrap_or(u64::MAX);
        let answer = self.request(
            &json!({ "exec": argv, "user": user, "env": env, "cgroup": cgroup, "patience_ms": patience_ms }),
            patience,
        )?;
        Ok(Ran {
            code: answer["code"].as_i64().map(|c| c as i32),
            stdout: answer["stdout"].as_str().unwrap_or_default().to_owned(),
            stderr: answer["stderr"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Starts `argv` as `user` in the VM, in `cgroup` if given, without
    /// waiting for it.
    pub fn spawn_detached(&self, user: &str, argv: &[&str], cgroup: Option<&str>) -> Result<()> {
        self.request(
            &json!({ "exec": argv, "user": user, "detach": true, "cgroup": cgroup }),
            PATIENCE,
        )?;
        Ok(())
    }

    /// Ends every process a scenario started (like removing a container).
    pub fn reset(&self) -> Result<()> {
        self.request(&json!({ "reset": true }), PATIENCE)?;
        Ok(())
    }

    /// Sets the VM's clock to the host's, then reads it back between two
    /// readings of the host's; records how far apart the two clocks can be
    /// (the setting's and the reading's round trips), after checking that
    /// the VM's reading lies within those bounds.
    pub fn set_clock(&self) -> Result<()> {
        let sent = unix_ms();
        self.request(&json!({ "set_clock": sent as u64 }), PATIENCE)?;
        let set_round_trip = unix_ms() - sent;
        let before = unix_ms();
        let read = self.request(&json!({ "clock": true }), PATIENCE)?;
        let after = unix_ms();
        let guest = u128::from(read["clock"].as_u64().context("the VM's clock")?);
        // Set late by at most one round trip, read between before and after.
        let earliest = before.saturating_sub(set_round_trip);
        if guest < earliest || guest > after {
            bail!("the VM's clock reads {guest}, outside [{earliest}, {after}] of the host's");
        }
        let uncertainty = set_round_trip + (after - before);
        self.clock_uncertainty_ms.store(
            u64::try_from(uncertainty).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }

    /// How far the VM's clock may be from the host's, in ms (see [`Vm::set_clock`]).
    pub fn clock_uncertainty_ms(&self) -> u128 {
        u128::from(
            self.clock_uncertainty_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Sets the link of the VM's network card up or down, through the QEMU
    /// monitor: down, no packet passes either way and no connection is told.
    pub fn set_link(&self, up: bool) -> Result<()> {
        let mut monitor =
            UnixStream::connect(&self.monitor).context("connect to the QEMU monitor")?;
        monitor.set_read_timeout(Some(PATIENCE))?;
        let mut reader = BufReader::new(monitor.try_clone()?);
        read_to_prompt(&mut reader)?;
        let state = if up { "on" } else { "off" };
        writeln!(monitor, "set_link {NIC} {state}")?;
        let said = read_to_prompt(&mut reader)?;
        // The monitor echoes the command and prompts again; anything more
        // is its complaint.
        let complaint: Vec<&str> = said
            .lines()
            .map(|line| line.trim_matches(|c: char| c.is_whitespace() || c.is_control()))
            .filter(|line| {
                !line.is_empty() && !line.contains("set_link") && !line.ends_with("(qemu)")
            })
            .collect();
        if !complaint.is_empty() {
            bail!("QEMU monitor, set_link {state}: {}", complaint.join(" / "));
        }
        Ok(())
    }

    /// The last lines of the serial console, for an error message.
    fn console_tail(&self) -> String {
        let text = fs::read_to_string(&self.console_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "its console ended with: {}",
            lines[lines.len().saturating_sub(8)..].join(" / ")
        )
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.request(&json!({ "poweroff": true }), PATIENCE);
        let mut qemu = self.qemu.lock().expect("qemu lock");
        let stopped = wait_for("the VM to power off", PATIENCE, || {
            qemu.try_wait().ok().flatten()
        });
        if stopped.is_err() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
    }
}

/// The QEMU id of the VM's network card.
const NIC: &str = "lab-nic";

/// What the monitor printed up to its next `(qemu) ` prompt, escape
/// sequences and all.
fn read_to_prompt(reader: &mut BufReader<UnixStream>) -> Result<String> {
    let mut said = Vec::new();
    while !said.ends_with(b"(qemu) ") {
        let mut byte = [0u8];
        std::io::Read::read_exact(reader, &mut byte).context("read the QEMU monitor")?;
        said.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&said).into_owned())
}

/// A port of 127.0.0.1 nothing listens on now, for QEMU's forward to sshd.
fn free_local_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// sshd's configuration (the containers' own, with a host key made for
/// this VM) and the `lab` key it accepts.
fn ssh_entries(ssh_dir: &Path, dir: &Path) -> Result<Vec<Entry>> {
    let host_key = dir.join("ssh_host_ed25519_key");
    let _ = fs::remove_file(&host_key);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "ningen-lab-vm", "-f"])
        .arg(&host_key))
    .context("make the VM's host key")?;
    let config = dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "{}HostKey /etc/ssh/ssh_host_ed25519_key\nPidFile /run/sshd.pid\nPrintMotd no\nPrintLastLog no\n",
            include_str!("../images/lab-sshd.conf")
        ),
    )?;
    let entries = vec![
        Entry::File {
            path: "/etc/ssh/sshd_config".into(),
            source: config,
            mode: 0o644,
        },
        Entry::File {
            path: "/etc/ssh/ssh_host_ed25519_key".into(),
            source: host_key,
            mode: 0o600,
        },
        Entry::File {
            path: "/lab/ssh/authorized_keys".into(),
            source: ssh_dir.join("authorized_keys"),
            mode: 0o644,
        },
    ];
    Ok(entries)
}

/// `entries` with a directory entry (0755) before the first entry inside
/// each directory none of them names.
fn with_directories(entries: Vec<Entry>) -> Vec<Entry> {
    let mut dirs = std::collections::HashSet::new();
    let mut out = Vec::new();
    for entry in entries {
        let path = match &entry {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path.trim_start_matches('/').to_owned()
            }
        };
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            if dirs.insert(dir.clone()) {
                out.push(Entry::Dir {
                    path: format!("/{dir}"),
                    mode: 0o755,
                });
            }
        }
        // A directory named after one inside it was placed is there already.
        if matches!(entry, Entry::Dir { .. }) && !dirs.insert(path) {
            continue;
        }
        out.push(entry);
    }
    out
}

/// `/init`, busybox and the modules in load order, with their list.
fn initramfs_entries(assets: &VmAssets, init: &Path, dir: &Path) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = ["/bin", "/dev", "/lib", "/lib/modules", "/proc", "/sys"]
        .iter()
        .map(|path| Entry::Dir {
            path: path.to_string(),
            mode: 0o755,
        })
        .collect();
    entries.push(Entry::File {
        path: "/init".into(),
        source: init.to_path_buf(),
        mode: 0o755,
    });
    entries.push(Entry::File {
        path: "/bin/busybox".into(),
        source: assets.busybox.clone(),
        mode: 0o755,
    });
    let mut list = String::new();
    for module in &assets.modules {
        let name = module
            .file_name()
            .context("module file name")?
            .to_string_lossy();
        let path = format!("/lib/modules/{name}");
        list.push_str(&path);
        list.push('\n');
        entries.push(Entry::File {
            path,
            source: module.clone(),
            mode: 0o644,
        });
    }
    let list_file = dir.join("modules");
    fs::write(&list_file, list)?;
    entries.push(Entry::File {
        path: "/lab/modules".into(),
        source: list_file,
        mode: 0o644,
    });
    Ok(entries)
}

fn qemu_said(dir: &Path) -> String {
    format!(
        "qemu: {}",
        fs::read_to_string(dir.join("qemu.log"))
            .unwrap_or_default()
            .trim()
    )
}
