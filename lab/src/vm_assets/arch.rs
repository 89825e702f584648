//! The two VM architectures, and the names and numbers by which they differ
//! for apt, rustc, qemu, the kernel's console and the ELF check.

/// The two VM architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmArch {
    /// arm64: the architecture the host cannot run natively.
    Aarch64,
    /// amd64: the host's own, booted in a VM for a kernel the lab controls.
    X86_64,
}

impl VmArch {
    /// Rust's name of the architecture (`std::env::consts::ARCH`).
    pub fn rust_arch(self) -> &'static str {
        match self {
            VmArch::Aarch64 => "aarch64",
            VmArch::X86_64 => "x86_64",
        }
    }

    /// Debian's name of the architecture, as apt and package names spell it.
    pub fn debian_arch(self) -> &'static str {
        match self {
            VmArch::Aarch64 => "arm64",
            VmArch::X86_64 => "amd64",
        }
    }

    /// The GNU triplet Debian names its library directories after.
    pub fn gnu_triplet(self) -> &'static str {
        match self {
            VmArch::Aarch64 => "aarch64-linux-gnu",
            VmArch::X86_64 => "x86_64-linux-gnu",
        }
    }

    /// The target whose binaries are static, so they run in a busybox initramfs.
    pub fn musl_target(self) -> &'static str {
        match self {
            VmArch::Aarch64 => "aarch64-unknown-linux-musl",
            VmArch::X86_64 => "x86_64-unknown-linux-musl",
        }
    }

    /// The qemu system emulator of the architecture.
    pub fn qemu_system(self) -> &'static str {
        match self {
            VmArch::Aarch64 => "qemu-system-aarch64",
            VmArch::X86_64 => "qemu-system-x86_64",
        }
    }

    /// The qemu arguments of the machine, without kernel, initrd, append or devices.
    ///
    /// Measured under TCG on the lab's machines (docs/lab.md): `neoverse-n1`
    /// boots ≈ 1.5 s faster than `max` on aarch64; on x86_64 `q35` and `pc`
    /// are within noise of each other, and `q35` gives virtio its PCIe.
    /// `-nic none`: no default network card; the one the lab adds (for SSH)
    /// is QEMU's user network with `restrict=on`, so the guest reaches
    /// nothing. `-no-reboot` turns the kernel's `panic=-1` reboot into a
    /// qemu exit, so a dead guest never hangs the lab.
    pub fn machine_args(self) -> Vec<&'static str> {
        let (machine, cpu) = match self {
            VmArch::Aarch64 => ("virt", "neoverse-n1"),
            VmArch::X86_64 => ("q35", "max"),
        };
        let mut args = vec!["-M", machine, "-cpu", cpu];
        args.extend([
            "-smp",
            "2",
            "-m",
            "1024",
            "-nographic",
            "-nic",
            "none",
            "-no-reboot",
        ]);
        args
    }

    /// The serial console device for `console=` on the kernel command line.
    pub fn console(self) -> &'static str {
        match self {
            VmArch::Aarch64 => "ttyAMA0",
            VmArch::X86_64 => "ttyS0",
        }
    }

    /// ELF `e_machine` of the architecture: catches a package of the wrong one.
    pub(super) fn elf_machine(self) -> usize {
        match self {
            VmArch::Aarch64 => 183,
            VmArch::X86_64 => 62,
        }
    }
}
