//! The verification lab of ningen-shikkaku: attacks the real `dazai` binary
//! in containers and VMs and records what it observed as evidence (docs/lab.md).
//!
//! - [`env`](mod@env): the `Lab`/`Env` builder scenarios are written with;
//! - [`scenarios`]: one module per threat-model row;
//! - [`stand_in`]: broken stand-ins for the daemon, for each row's negative control;
//! - `lab_guest`: what runs inside the machines (probes, observer, the VM init);
//! - [`images`]: the locally built images, cached by input hash;
//! - [`host`]: guards that restore every host setting a scenario changes;
//! - [`vm`]: a lab VM (qemu-system, a Debian kernel and root filesystem, systemd as PID 1);
//! - [`vm_assets`]: Debian kernels, modules, busybox and root filesystems for the qemu VMs, and their initramfs;
//! - [`report`]: the evidence report (JSON and Markdown).

pub mod env;
pub mod host;
pub mod images;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod stand_in;
pub mod vm;
pub mod vm_assets;
