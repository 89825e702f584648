//! A lab VM: a Debian kernel of the architecture under test, booted by
//! qemu-system under TCG with `lab-init` as PID 1. The host reaches it
//! through two channels only: a virtio-serial port on which `lab-init`'s
//! agent runs commands, and two 9p shares (`/lab/bin` read-only, `/lab/work`)
//! where the evidence files land, exactly as in a container's bind mounts.
//! It also has one disk, `/dev/vda`, blank: the swap row's swap device.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::env::{wait_for, Ran, PATIENCE};
use crate::vm_assets::{write_initramfs, DebianRelease, Entry, VmArch, VmAssets};

/// How long a TCG boot may take before the lab gives up on the VM.
const BOOT_PATIENCE: Duration = Duration::from_secs(120);
/// The size of the VM's swap disk (sparse on the host until swapped to).
pub const SWAP_DISK_MIB: u64 = 512;
/// Where the swap disk is inside the VM: its only disk.
pub const SWAP_DEVICE: &str = "/dev/vda";

/// A running lab VM.
pub struct Vm {
    /// Its architecture.
    pub arch: VmArch,
    /// `uname -r` inside it.
    pub kernel: String,
    /// The Debian release its kernel comes from.
    pub release: DebianRelease,
    /// The Debian package the kernel came from.
    pub kernel_package: String,
    /// Everything the VM printed on its serial console.
    pub console_log: PathBuf,
    qemu: Mutex<Child>,
    agent: Mutex<Agent>,
}

struct Agent {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Vm {
    /// Boots `assets`' kernel with an initramfs holding `init` as `/init`;
    /// shares `bin_dir` at `/lab/bin` and `work` at `/lab/work`.
    pub fn boot(assets: &VmAssets, init: &Path, bin_dir: &Path, work: &Path) -> Result<Vm> {
        let dir = work.join(format!("vm-{}", assets.arch.rust_arch()));
        fs::create_dir_all(&dir)?;
        let initrd = dir.join("initrd.gz");
        write_initramfs(&initrd, &initramfs_entries(assets, init, &dir)?)?;
        let socket = dir.join("agent.sock");
        let console_log = dir.join("console.log");
        let swap_disk = dir.join("swap.img");
        fs::File::create(&swap_disk)
            .and_then(|disk| disk.set_len(SWAP_DISK_MIB << 20))
            .with_context(|| format!("create {}", swap_disk.display()))?;
        let _ = fs::remove_file(&socket);
        let append = format!(
            "console={} panic=-1 quiet secretmem.enable=1",
            assets.arch.console()
        );
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
        };
        let mut vm = Vm {
            arch: assets.arch,
            kernel: String::new(),
            release: assets.release,
            kernel_package: assets.kernel_package.clone(),
            console_log,
            qemu,
            agent: Mutex::new(agent),
        };
        let hello = vm
            .request(&json!({ "hello": true }), BOOT_PATIENCE)
            .context("the VM did not come up")?;
        vm.kernel = hello["kernel"].as_str().unwrap_or_default().to_owned();
        if hello["arch"] != assets.arch.rust_arch() {
            bail!(
                "the VM says it is {}, not {}",
                hello["arch"],
                assets.arch.rust_arch()
            );
        }
        Ok(vm)
    }

    /// Sends one request to the agent and waits up to `patience` for its answer.
    pub fn request(&self, request: &Value, patience: Duration) -> Result<Value> {
        let mut agent = self.agent.lock().expect("agent lock");
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        agent
            .writer
            .write_all(&line)
            .context("write to the VM agent")?;
        agent.reader.get_ref().set_read_timeout(Some(patience))?;
        let mut answer = String::new();
        let read = agent.reader.read_line(&mut answer);
        match read {
            Ok(0) => bail!("the VM went away; {}", self.console_tail()),
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
        let answer: Value = serde_json::from_str(&answer).context("agent answer")?;
        if let Some(error) = answer.get("error") {
            bail!("VM agent: {}", error.as_str().unwrap_or_default());
        }
        Ok(answer)
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
        let answer = self.request(
            &json!({ "exec": argv, "user": user, "env": env, "cgroup": cgroup }),
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

/// `/init`, busybox, the modules in load order and their list.
fn initramfs_entries(assets: &VmAssets, init: &Path, dir: &Path) -> Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = [
        "/bin",
        "/dev",
        "/etc",
        "/home",
        "/lab",
        "/lib",
        "/lib/modules",
        "/proc",
        "/root",
        "/run",
        "/sys",
        "/tmp",
    ]
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
