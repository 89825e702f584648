//! What the lab needs to boot a real Debian kernel under `qemu-system` (TCG)
//! for both architectures: the kernel, the few modules it must load, a static
//! busybox, and a writer for the newc initramfs the lab composes around them.
//!
//! A real kernel is needed because qemu-user implements neither seccomp nor
//! ptrace nor `MADV_DONTDUMP` (docs/lab.md): no security property may be
//! judged under it. Packages are fetched with a private apt state, so the
//! host's `/etc/apt`, `/var/lib/apt` and dpkg architectures stay untouched.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::host::run;

/// The two VM architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// `-nic none`: the guest gets no network, so the lab's traffic stays on
    /// the host. `-no-reboot` turns the kernel's `panic=-1` reboot into a qemu
    /// exit, so a dead guest never hangs the lab.
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
    fn elf_machine(self) -> usize {
        match self {
            VmArch::Aarch64 => 183,
            VmArch::X86_64 => 62,
        }
    }
}

/// A Debian kernel, its modules the lab needs, and a static busybox, for one architecture.
#[derive(Clone, Debug)]
pub struct VmAssets {
    /// The architecture all of these are built for.
    pub arch: VmArch,
    /// `uname -r` inside the VM, e.g. "6.1.0-41-arm64".
    pub kernel_release: String,
    /// The exact Debian package and version the kernel came from, for the
    /// evidence report, e.g. "linux-image-6.1.0-41-arm64 6.1.158-1".
    pub kernel_package: String,
    /// The kernel for qemu's `-kernel`: arm64's `Image` as Debian ships it;
    /// on x86_64 the ELF `vmlinux` unpacked from Debian's bzImage, which qemu
    /// boots through its PVH entry. That skips the in-guest decompression:
    /// measured under TCG, a boot takes ≈ 4 s instead of ≈ 10 s (the price:
    /// no kernel-text KASLR, which no lab scenario depends on).
    pub vmlinuz: PathBuf,
    /// Module files (uncompressed `.ko`) in the order they must be loaded:
    /// dependencies first, built-ins skipped. They are the virtio PCI
    /// transport, `virtio_console` (virtio-serial ports) and 9p over virtio,
    /// which Debian builds as modules.
    pub modules: Vec<PathBuf>,
    /// `/bin/busybox` from Debian's `busybox-static` of the architecture.
    pub busybox: PathBuf,
    /// The exact package and version busybox came from, for the evidence report.
    pub busybox_package: String,
}

/// The Debian suites fetched from, each with the URI used when the host's
/// sources do not name it; security is where the newest kernels are.
const SUITES: &[(&str, &str)] = &[
    ("bookworm", "http://deb.debian.org/debian"),
    ("bookworm-updates", "http://deb.debian.org/debian"),
    ("bookworm-security", "http://deb.debian.org/debian-security"),
];
/// Where the host names its Debian mirror, so the lab uses the same one.
const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The host's Debian archive keyring: packages are verified as apt always does.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The kernel's ABI series: bookworm's 6.1.
const KERNEL_PREFIX: &str = "linux-image-6.1.0-";
/// Modules the lab loads; their dependencies are resolved from the kernel.
const MODULE_ROOTS: &[&str] = &["virtio_pci", "virtio_console", "9pnet_virtio", "9p"];
/// Written last: its presence marks a complete cache.
const MANIFEST: &str = "assets.json";

/// What a complete cache holds, beyond the fixed file names.
#[derive(Serialize, Deserialize)]
struct Manifest {
    kernel_release: String,
    kernel_package: String,
    busybox_package: String,
    /// Module names in load order; each is `modules/<name>.ko`.
    modules: Vec<String>,
}

/// Downloads (once; cached under `cache_dir/<debian_arch>/`) the newest
/// bookworm `linux-image-6.1.0-*-<arch>` and `busybox-static` for `arch`, and
/// extracts what the lab needs. Remove that directory to fetch a newer kernel.
///
/// apt runs with a private state, cache and sources list (and `arch` as its
/// only architecture), so the host's apt configuration, lists and dpkg
/// architectures are never changed. `log` receives one line per step.
pub fn fetch(arch: VmArch, cache_dir: &Path, log: &mut dyn FnMut(&str)) -> Result<VmAssets> {
    let name = arch.debian_arch();
    let dir = cache_dir.join(name);
    if let Some(assets) = cached(arch, &dir) {
        log(&format!("vm assets ({name}): cached in {}", dir.display()));
        return Ok(assets);
    }
    // A directory without a complete manifest is a fetch that died half-way.
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let work = dir.join("work");
    let host = fs::read_to_string(HOST_SOURCES).unwrap_or_default();
    let sources = sources_list(&host);
    log(&format!(
        "vm assets ({name}): apt-get update (private state in {}): {}",
        work.display(),
        sources
            .replace(&format!("deb [signed-by={KEYRING}] "), "")
            .trim_end()
            .replace('\n', ", ")
    ));
    let apt = PrivateApt::create(arch, &work.join("apt"), &sources)?;
    run(apt.command("apt-get").arg("update")).context("apt-get update with the private state")?;

    // `.` is the only regex metacharacter of the prefix.
    let pattern = format!("^{}[0-9]+-{name}$", KERNEL_PREFIX.replace('.', "\\."));
    let found = run(apt
        .command("apt-cache")
        .args(["search", "--names-only", &pattern]))?;
    let kernel = newest_kernel(&found, name)
        .with_context(|| format!("no {KERNEL_PREFIX}*-{name} in the bookworm suites"))?;

    let debs = work.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    log(&format!(
        "vm assets ({name}): downloading {kernel} ({name})"
    ));
    let kernel_deb = apt.download(&kernel, &debs)?;
    log(&format!(
        "vm assets ({name}): downloading busybox-static ({name})"
    ));
    let busybox_deb = apt.download("busybox-static", &debs)?;

    log(&format!(
        "vm assets ({name}): extracting the kernel and its modules"
    ));
    let root = work.join("root");
    extract(&kernel_deb, &root, &["./boot/vmlinuz-*", "./lib/modules/*"])?;
    extract(&busybox_deb, &root, &["./bin/busybox"])?;
    let kernel_release = kernel
        .strip_prefix("linux-image-")
        .context("kernel package name")?
        .to_owned();
    let modules_dir = root.join("lib/modules").join(&kernel_release);
    let index = module_index(&modules_dir)?;
    let builtin = builtin_names(&modules_dir.join("modules.builtin"))?;
    let order = load_order(MODULE_ROOTS, &builtin, &mut |module| {
        let path = index.get(module).with_context(|| {
            // bookworm's 6.1 kernels ship plain `.ko`; a compressed one would
            // need decompressing here.
            format!("module {module}: no {module}.ko in {kernel}")
        })?;
        modinfo_depends(path)
    })?;

    let manifest = Manifest {
        kernel_package: package_version(&kernel_deb)?,
        busybox_package: package_version(&busybox_deb)?,
        kernel_release,
        modules: order,
    };
    let assets = assets(arch, &dir, &manifest);
    let image = root.join(format!("boot/vmlinuz-{}", manifest.kernel_release));
    match arch {
        VmArch::Aarch64 => copy(&image, &assets.vmlinuz)?,
        VmArch::X86_64 => {
            unpack_bzimage(&image, &assets.vmlinuz, &work)?;
            check_machine(arch, &assets.vmlinuz)?;
        }
    }
    fs::create_dir_all(dir.join("modules")).context("create the modules directory")?;
    for (module, to) in manifest.modules.iter().zip(&assets.modules) {
        copy(&index[module], to)?;
        check_machine(arch, to)?;
    }
    copy(&root.join("bin/busybox"), &assets.busybox)?;
    check_machine(arch, &assets.busybox)?;
    log(&format!(
        "vm assets ({name}): {}, modules in load order: {}",
        manifest.kernel_package,
        manifest.modules.join(" ")
    ));

    let json = serde_json::to_string_pretty(&manifest).context("serialize the manifest")?;
    fs::write(dir.join(MANIFEST), json).context("write the manifest")?;
    fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    Ok(assets)
}

/// The assets of a complete cache, or `None` if anything is missing or the
/// manifest is unreadable (a fetch that died while writing it): fetch again.
fn cached(arch: VmArch, dir: &Path) -> Option<VmAssets> {
    let json = fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let manifest: Manifest = serde_json::from_str(&json).ok()?;
    let assets = assets(arch, dir, &manifest);
    let complete = [&assets.vmlinuz, &assets.busybox]
        .into_iter()
        .chain(&assets.modules)
        .all(|path| path.is_file());
    complete.then_some(assets)
}

/// Where each asset of `manifest` lives in the cache directory `dir`.
fn assets(arch: VmArch, dir: &Path, manifest: &Manifest) -> VmAssets {
    VmAssets {
        arch,
        kernel_release: manifest.kernel_release.clone(),
        kernel_package: manifest.kernel_package.clone(),
        vmlinuz: dir.join("vmlinuz"),
        modules: manifest
            .modules
            .iter()
            .map(|module| dir.join("modules").join(format!("{module}.ko")))
            .collect(),
        busybox: dir.join("busybox"),
        busybox_package: manifest.busybox_package.clone(),
    }
}

/// A one-line-style sources list of [`SUITES`], each from the URI the host's
/// deb822 `sources` names for it.
fn sources_list(host_deb822: &str) -> String {
    SUITES
        .iter()
        .map(|(suite, default)| {
            let uri = deb822_uri(host_deb822, suite).unwrap_or(default);
            format!("deb [signed-by={KEYRING}] {uri} {suite} main\n")
        })
        .collect()
}

/// The first URI of the first `deb` stanza of `text` that lists `suite`.
fn deb822_uri<'a>(text: &'a str, suite: &str) -> Option<&'a str> {
    let mut stanzas = vec![HashMap::new()];
    let mut last_key = "";
    for line in text.lines() {
        if line.trim().is_empty() {
            stanzas.push(HashMap::new());
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            // A continuation line: one more value of the field above.
            let fields = stanzas.last_mut()?;
            fields
                .entry(last_key)
                .or_insert_with(Vec::new)
                .extend(line.split_whitespace());
        } else if let Some((key, value)) = line.split_once(':') {
            last_key = key.trim();
            let fields = stanzas.last_mut()?;
            fields.insert(last_key, value.split_whitespace().collect());
        }
    }
    stanzas.iter().find_map(|fields| {
        let has = |key: &str, want: &str| fields.get(key).is_some_and(|v| v.contains(&want));
        if has("Types", "deb") && has("Suites", suite) {
            fields.get("URIs")?.first().copied()
        } else {
            None
        }
    })
}

/// The newest `linux-image-6.1.0-N-<arch>` among `apt-cache search` lines,
/// by ABI number N (numerically: 9 is older than 41).
fn newest_kernel(search: &str, debian_arch: &str) -> Option<String> {
    let suffix = format!("-{debian_arch}");
    search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|package| {
            let abi = package.strip_prefix(KERNEL_PREFIX)?.strip_suffix(&suffix)?;
            Some((abi.parse::<u32>().ok()?, package))
        })
        .max()
        .map(|(_, package)| package.to_owned())
}

/// apt with its own state, cache, sources, preferences and architecture:
/// nothing of the host's apt is written, and only its apt.conf.d (a proxy,
/// say) still applies.
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    /// Lays out the private directories under `root` for `sources`.
    fn create(arch: VmArch, root: &Path, sources: &str) -> Result<Self> {
        for sub in ["state/lists/partial", "cache/archives/partial"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let list = root.join("sources.list");
        fs::write(&list, sources).with_context(|| format!("write {}", list.display()))?;
        // An empty dpkg status: what the host has installed must not
        // influence what is chosen.
        let status = root.join("status");
        fs::write(&status, "").with_context(|| format!("write {}", status.display()))?;
        let arch = arch.debian_arch();
        let path = |sub: &str| root.join(sub).display().to_string();
        let options = [
            format!("Dir::State={}", path("state")),
            format!("Dir::State::status={}", status.display()),
            format!("Dir::Cache={}", path("cache")),
            format!("Dir::Etc::SourceList={}", list.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            "Dir::Etc::Preferences=/dev/null".to_owned(),
            "Dir::Etc::PreferencesParts=/dev/null".to_owned(),
            format!("APT::Architecture={arch}"),
            format!("APT::Architectures={arch}"),
            "Acquire::Languages=none".to_owned(),
            // The private directories belong to root: the `_apt` sandbox user
            // could not write there, and apt would warn on every download.
            "APT::Sandbox::User=root".to_owned(),
        ];
        Ok(Self {
            options: options
                .into_iter()
                .flat_map(|option| ["-o".to_owned(), option])
                .collect(),
        })
    }

    /// `program` (apt-get, apt-cache) with the private options.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.arg("-q").args(&self.options);
        command
    }

    /// Downloads the candidate of `package` into `dir`; returns the `.deb`.
    fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        run(self
            .command("apt-get")
            .current_dir(dir)
            .args(["download", package]))
        .with_context(|| format!("download {package}"))?;
        let prefix = format!("{package}_");
        fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download left no {prefix}*.deb"))
    }
}

/// "package version" as recorded inside the `.deb` itself.
fn package_version(deb: &Path) -> Result<String> {
    run(Command::new("dpkg-deb")
        .args(["--show", "--showformat=${Package} ${Version}"])
        .arg(deb))
}

/// Extracts the members of `deb` matching `patterns` (tar wildcards) into `to`;
/// a pattern that matches nothing is an error.
fn extract(deb: &Path, to: &Path, patterns: &[&str]) -> Result<()> {
    fs::create_dir_all(to).with_context(|| format!("create {}", to.display()))?;
    let mut unpack = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run dpkg-deb --fsys-tarfile")?;
    let tar_input = unpack.stdout.take().context("dpkg-deb's stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(to)
        .arg("--wildcards")
        .args(patterns)
        .stdin(tar_input)
        .output()
        .context("run tar -x")?;
    let unpacked = unpack.wait_with_output().context("wait for dpkg-deb")?;
    ensure!(
        unpacked.status.success(),
        "dpkg-deb --fsys-tarfile {} failed: {}",
        deb.display(),
        String::from_utf8_lossy(&unpacked.stderr).trim()
    );
    ensure!(
        tar.status.success(),
        "tar -x {patterns:?} from {} failed: {}",
        deb.display(),
        String::from_utf8_lossy(&tar.stderr).trim()
    );
    Ok(())
}

/// Writes the ELF `vmlinux` compressed inside the x86 bzImage `bzimage` to
/// `to` (see [`VmAssets::vmlinuz`] for why), using `work` for the payload.
fn unpack_bzimage(bzimage: &Path, to: &Path, work: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    ensure!(
        image.get(0x202..0x206) == Some(b"HdrS"),
        "{} is not a bzImage",
        bzimage.display()
    );
    // The boot protocol's setup header: the payload follows the real-mode
    // setup sectors (0 of them means 4).
    let setup_sectors = match le_field(&image, 0x1f1, 1)? {
        0 => 4,
        sectors => sectors,
    };
    let start = (setup_sectors + 1) * 512 + le_field(&image, 0x248, 4)?;
    let length = le_field(&image, 0x24c, 4)?;
    let payload = image
        .get(start..)
        .and_then(|rest| rest.get(..length))
        .context("bzImage payload outside the file")?;
    ensure!(
        payload.starts_with(b"\xfd7zXZ\0"),
        "the bzImage payload is not xz, which bookworm's kernels use"
    );
    let compressed = work.join("vmlinux.xz");
    fs::write(&compressed, payload).with_context(|| format!("write {}", compressed.display()))?;
    let out = fs::File::create(to).with_context(|| format!("create {}", to.display()))?;
    // `--single-stream`: the payload ends with the kernel's 4-byte size,
    // which is not xz.
    let xz = Command::new("xz")
        .args(["--decompress", "--stdout", "--single-stream"])
        .arg(&compressed)
        .stdout(out)
        .output()
        .context("run xz (xz-utils unpacks the amd64 kernel)")?;
    ensure!(
        xz.status.success(),
        "xz --decompress {} failed: {}",
        compressed.display(),
        String::from_utf8_lossy(&xz.stderr).trim()
    );
    Ok(())
}

/// Copies `from` to `to`, naming both on failure.
fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))
        .map(drop)
}

/// Refuses an executable or module built for another architecture.
fn check_machine(arch: VmArch, path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let machine = le_field(elf_header(&bytes)?, 0x12, 2)?;
    ensure!(
        machine == arch.elf_machine(),
        "{} is for ELF machine {machine}, not {}",
        path.display(),
        arch.rust_arch()
    );
    Ok(())
}

/// A module's name as the kernel knows it: file stem, `-` read as `_`.
fn module_name(file: &str) -> Option<String> {
    let stem = file.strip_suffix(".ko")?;
    Some(stem.rsplit('/').next()?.replace('-', "_"))
}

/// Every `.ko` under `modules_dir/kernel`, by module name.
fn module_index(modules_dir: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut index = HashMap::new();
    let mut pending = vec![modules_dir.join("kernel")];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Some(name) = path.to_str().and_then(module_name) {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// Names of the modules built into the kernel (`modules.builtin`).
fn builtin_names(path: &Path) -> Result<HashSet<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(text.lines().filter_map(module_name).collect())
}

/// `roots` and everything they depend on, each after its dependencies,
/// without built-ins; `depends` gives a module's direct dependencies.
fn load_order(
    roots: &[&str],
    builtin: &HashSet<String>,
    depends: &mut dyn FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        module: &str,
        builtin: &HashSet<String>,
        depends: &mut dyn FnMut(&str) -> Result<Vec<String>>,
        visiting: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if builtin.contains(module) || order.iter().any(|done| done == module) {
            return Ok(());
        }
        ensure!(
            !visiting.iter().any(|seen| seen == module),
            "module dependency cycle: {} -> {module}",
            visiting.join(" -> ")
        );
        visiting.push(module.to_owned());
        for dependency in depends(module)? {
            visit(&dependency, builtin, depends, visiting, order)?;
        }
        visiting.pop();
        order.push(module.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    for root in roots {
        visit(
            &root.replace('-', "_"),
            builtin,
            depends,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

/// The direct dependencies of the module at `path`, from the `depends=` entry
/// of its `.modinfo` section. This is what `depmod` turns into `modules.dep`,
/// which the package does not ship (its postinst runs `depmod`), and `depmod`
/// (kmod) is not on every host.
fn modinfo_depends(path: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let modinfo = modinfo_section(&bytes).with_context(|| format!("read {}", path.display()))?;
    let depends = modinfo
        .split(|&b| b == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .with_context(|| format!("{}: no depends= in .modinfo", path.display()))?;
    let depends = std::str::from_utf8(depends).context("depends= is not UTF-8")?;
    Ok(depends
        .split(',')
        .filter(|name| !name.is_empty())
        .map(|name| name.replace('-', "_"))
        .collect())
}

/// `bytes` if they start like a little-endian ELF64 file (both VM
/// architectures are); the header fields below assume that layout.
fn elf_header(bytes: &[u8]) -> Result<&[u8]> {
    ensure!(
        bytes.len() >= 64 && bytes.starts_with(b"\x7fELF") && bytes[4] == 2 && bytes[5] == 1,
        "not a little-endian ELF64 file"
    );
    Ok(bytes)
}

/// The little-endian unsigned field of `len` bytes at `at` (ELF and bzImage headers).
fn le_field(bytes: &[u8], at: usize, len: usize) -> Result<usize> {
    let field = bytes
        .get(at..)
        .and_then(|rest| rest.get(..len))
        .context("truncated header")?;
    Ok(field
        .iter()
        .rev()
        .fold(0, |value, &byte| (value << 8) | usize::from(byte)))
}

/// The `.modinfo` section of a kernel module: NUL-separated `key=value`.
fn modinfo_section(bytes: &[u8]) -> Result<&[u8]> {
    let elf = elf_header(bytes)?;
    let table = le_field(elf, 0x28, 8)?;
    let entry_size = le_field(elf, 0x3a, 2)?;
    let count = le_field(elf, 0x3c, 2)?;
    let names_index = le_field(elf, 0x3e, 2)?;
    let section = |index: usize| -> Result<(usize, &[u8])> {
        let header = table
            .checked_add(index * entry_size)
            .context("ELF section table offset")?;
        let name = le_field(elf, header, 4)?;
        let offset = le_field(elf, header + 0x18, 8)?;
        let size = le_field(elf, header + 0x20, 8)?;
        let data = elf
            .get(offset..)
            .and_then(|rest| rest.get(..size))
            .context("ELF section outside the file")?;
        Ok((name, data))
    };
    let (_, names) = section(names_index)?;
    for index in 0..count {
        let (name, data) = section(index)?;
        let name = names.get(name..).unwrap_or_default();
        if name.split(|&b| b == 0).next() == Some(b".modinfo") {
            return Ok(data);
        }
    }
    bail!("no .modinfo section")
}

/// One entry of an initramfs.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A directory; it must come before anything inside it.
    Dir {
        /// Path inside the initramfs, relative or starting with `/`.
        path: String,
        /// Permission bits only (e.g. `0o755`): the type is added here.
        mode: u32,
    },
    /// A regular file with the contents of a host file.
    File {
        /// Path inside the initramfs; its parent must be an earlier [`Entry::Dir`].
        path: String,
        /// The host file, read when the archive is written.
        source: PathBuf,
        /// Permission bits only (e.g. `0o755`).
        mode: u32,
    },
    /// A symbolic link (mode `0o777`, as links always are).
    Symlink {
        /// Path of the link; its parent must be an earlier [`Entry::Dir`].
        path: String,
        /// What the link points to, stored verbatim.
        target: String,
    },
}

/// Writes a gzip-compressed newc cpio archive of `entries` to `out`, the
/// format the kernel unpacks as an initramfs.
///
/// Owners are root and mtimes 0, so the same entries give the same bytes.
/// Paths are checked (no empty, `.` or `..` components, no duplicates, parents
/// first), because the kernel's unpacker skips what it cannot place silently.
pub fn write_initramfs(out: &Path, entries: &[Entry]) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut gzip = GzEncoder::new(BufWriter::new(file), Compression::default());
    write_newc(&mut gzip, entries).with_context(|| format!("write {}", out.display()))?;
    gzip.finish()
        .and_then(|mut file| file.flush())
        .with_context(|| format!("finish {}", out.display()))
}

/// The uncompressed newc archive of `entries`, trailer included.
fn write_newc(out: &mut impl Write, entries: &[Entry]) -> Result<()> {
    const S_IFDIR: u32 = 0o040_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFLNK: u32 = 0o120_000;
    let mut seen = HashSet::new();
    let mut dirs = HashSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let (path, mode, data) = match entry {
            Entry::Dir { path, mode } => (path, *mode, None),
            Entry::File { path, source, mode } => {
                let data = fs::read(source)
                    .with_context(|| format!("read {} for {path}", source.display()))?;
                (path, *mode, Some(data))
            }
            Entry::Symlink { path, target } => (path, 0o777, Some(target.clone().into_bytes())),
        };
        let name = path.trim_start_matches('/');
        ensure!(
            !name.is_empty()
                && name
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != ".."),
            "initramfs path {path:?} is not a plain path"
        );
        ensure!(
            mode <= 0o7777,
            "{path}: mode {mode:o} is more than permission bits"
        );
        if let Some((parent, _)) = name.rsplit_once('/') {
            ensure!(
                dirs.contains(parent),
                "{path}: its directory /{parent} must be an earlier entry"
            );
        }
        ensure!(seen.insert(name), "{path}: listed twice");
        let (kind, nlink) = match entry {
            Entry::Dir { .. } => {
                dirs.insert(name);
                (S_IFDIR, 2)
            }
            Entry::File { .. } => (S_IFREG, 1),
            Entry::Symlink { .. } => (S_IFLNK, 1),
        };
        let data = data.unwrap_or_default();
        let ino = u32::try_from(index + 1).context("too many entries")?;
        newc_record(out, ino, kind | mode, nlink, name, &data)?;
    }
    newc_record(out, 0, 0, 1, "TRAILER!!!", &[])
}

/// One newc record: the 110-byte ASCII header, the NUL-terminated name and the
/// data, each padded to 4 bytes.
fn newc_record(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
) -> Result<()> {
    let size = u32::try_from(data.len()).with_context(|| format!("{name}: over 4 GiB"))?;
    let name_size = u32::try_from(name.len() + 1).context("name too long")?;
    let (uid, gid, mtime, dev, check) = (0u32, 0u32, 0u32, 0u32, 0u32);
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {dev:08x}{dev:08x}{dev:08x}{dev:08x}{name_size:08x}{check:08x}"
    );
    let padding = |len: usize| &[0u8; 3][..(4 - len % 4) % 4];
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(padding(header.len() + name.len() + 1))?;
    out.write_all(data)?;
    out.write_all(padding(data.len()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    /// One record read back: name, mode, data.
    type Record = (String, u32, Vec<u8>);

    /// A reader independent of the writer: parses by the newc layout, checks
    /// magic, NUL, padding and that the trailer ends the archive.
    fn read_initramfs(path: &Path) -> Vec<Record> {
        let mut bytes = Vec::new();
        GzDecoder::new(fs::File::open(path).unwrap())
            .read_to_end(&mut bytes)
            .unwrap();
        let align = |at: usize| at.div_ceil(4) * 4;
        let mut records = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
            let name = &bytes[at + 110..at + 110 + name_size];
            assert_eq!(name.last(), Some(&0), "name is NUL-terminated");
            let name = String::from_utf8(name[..name_size - 1].to_vec()).unwrap();
            let data_at = align(at + 110 + name_size);
            assert!(bytes[at + 110 + name_size..data_at].iter().all(|&b| b == 0));
            let data = bytes[data_at..data_at + size].to_vec();
            at = align(data_at + size);
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len(), "the trailer ends the archive");
                return records;
            }
            records.push((name, mode, data));
        }
    }

    #[test]
    fn initramfs_round_trips_dirs_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("busybox");
        // 5 bytes: the data needs padding, so alignment is exercised.
        fs::write(&source, b"hello").unwrap();
        let out = dir.path().join("initrd.gz");
        let entries = [
            Entry::Dir {
                path: "/bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "/bin/busybox".into(),
                source,
                mode: 0o755,
            },
            Entry::Symlink {
                path: "/bin/sh".into(),
                target: "busybox".into(),
            },
            Entry::Dir {
                path: "/bin/sub".into(),
                mode: 0o700,
            },
        ];
        write_initramfs(&out, &entries).unwrap();
        let records = read_initramfs(&out);
        assert_eq!(
            records,
            [
                ("bin".to_owned(), 0o040_755, Vec::new()),
                ("bin/busybox".to_owned(), 0o100_755, b"hello".to_vec()),
                ("bin/sh".to_owned(), 0o120_777, b"busybox".to_vec()),
                ("bin/sub".to_owned(), 0o040_700, Vec::new()),
            ]
        );
    }

    #[test]
    fn initramfs_refuses_what_the_kernel_would_drop() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initrd.gz");
        let link = |path: &str| Entry::Symlink {
            path: path.into(),
            target: "x".into(),
        };
        let bin = Entry::Dir {
            path: "/bin".into(),
            mode: 0o755,
        };
        let refused = [
            vec![link("/bin/sh")],
            vec![bin.clone(), bin.clone()],
            vec![link("/bin"), link("/bin/sh")],
            vec![bin.clone(), link("/bin/../sh")],
            vec![link("/")],
            vec![Entry::Dir {
                path: "/tmp".into(),
                mode: 0o041_777,
            }],
        ];
        for entries in refused {
            assert!(write_initramfs(&out, &entries).is_err(), "{entries:?}");
        }
        write_initramfs(&out, &[bin, link("/bin/sh")]).unwrap();
    }

    #[test]
    fn load_order_puts_dependencies_first_and_skips_builtins() {
        let depends: HashMap<&str, &[&str]> = HashMap::from([
            (
                "virtio_pci",
                &["virtio_ring", "virtio_pci_modern_dev", "virtio"][..],
            ),
            ("virtio_pci_modern_dev", &[][..]),
            ("virtio_console", &["virtio", "virtio_ring"][..]),
            ("9pnet_virtio", &["virtio", "9pnet", "virtio_ring"][..]),
            ("9pnet", &[][..]),
            ("9p", &["9pnet", "fscache", "netfs"][..]),
            ("fscache", &["netfs"][..]),
            ("netfs", &[][..]),
        ]);
        let builtin = HashSet::from(["virtio".to_owned(), "virtio_ring".to_owned()]);
        let order = load_order(MODULE_ROOTS, &builtin, &mut |module| {
            let direct = depends.get(module).context(module.to_owned())?;
            Ok(direct.iter().map(|name| name.to_string()).collect())
        })
        .unwrap();
        assert_eq!(
            order,
            [
                "virtio_pci_modern_dev",
                "virtio_pci",
                "virtio_console",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "fscache",
                "9p"
            ]
        );
        let cyclic = load_order(&["a"], &HashSet::new(), &mut |module| {
            Ok(vec![if module == "a" { "b" } else { "a" }.to_owned()])
        });
        assert!(cyclic.is_err());
    }

    /// A minimal ELF64 module: null section, `.modinfo`, `.shstrtab`.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let modinfo_at = 64;
        let names_at = modinfo_at + modinfo.len();
        let table_at = names_at + names.len();
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        elf[0x28..0x30].copy_from_slice(&(table_at as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf.extend_from_slice(modinfo);
        elf.extend_from_slice(names);
        for (name, at, size) in [
            (0, 0, 0),
            (1, modinfo_at, modinfo.len()),
            (10, names_at, names.len()),
        ] {
            let mut header = [0u8; 64];
            header[..4].copy_from_slice(&(name as u32).to_le_bytes());
            header[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
            header[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&header);
        }
        elf
    }

    #[test]
    fn modinfo_depends_reads_the_elf_section() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("9p.ko");
        fs::write(
            &module,
            fake_module(b"license=GPL\0depends=9pnet,fscache,net-fs\0name=9p\0"),
        )
        .unwrap();
        assert_eq!(
            modinfo_depends(&module).unwrap(),
            ["9pnet", "fscache", "net_fs"]
        );
        check_machine(VmArch::Aarch64, &module).unwrap();
        assert!(check_machine(VmArch::X86_64, &module).is_err());

        fs::write(&module, fake_module(b"depends=\0")).unwrap();
        assert!(modinfo_depends(&module).unwrap().is_empty());
        fs::write(&module, fake_module(b"license=GPL\0")).unwrap();
        assert!(modinfo_depends(&module).is_err());
        fs::write(&module, b"not an ELF file at all").unwrap();
        assert!(modinfo_depends(&module).is_err());
    }

    #[test]
    fn newest_kernel_compares_abi_numbers_and_skips_flavours() {
        let search = "\
linux-image-6.1.0-9-arm64 - Linux 6.1 for 64-bit ARMv8 machines (signed)
linux-image-6.1.0-41-arm64 - Linux 6.1 for 64-bit ARMv8 machines (signed)
linux-image-6.1.0-56-rt-arm64 - Linux 6.1 for 64-bit ARMv8 machines, PREEMPT_RT
linux-image-6.1.0-57-cloud-arm64 - Linux 6.1 for arm64 cloud
linux-image-6.1.0-58-arm64-dbg - Debug symbols
linux-image-6.1.0-41-amd64 - Linux 6.1 for 64-bit PCs (signed)
";
        assert_eq!(
            newest_kernel(search, "arm64").as_deref(),
            Some("linux-image-6.1.0-41-arm64")
        );
        assert_eq!(newest_kernel(search, "armhf"), None);
    }

    #[test]
    fn sources_follow_the_hosts_mirror() {
        let host = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://wrong.example/debian-security
Suites: bookworm-security

Types: deb
URIs: http://mirror.example/debian-security
Suites:
 bookworm-security
Components: main
";
        assert_eq!(
            sources_list(host),
            format!(
                "deb [signed-by={KEYRING}] http://mirror.example/debian bookworm main\n\
                 deb [signed-by={KEYRING}] http://mirror.example/debian bookworm-updates main\n\
                 deb [signed-by={KEYRING}] http://mirror.example/debian-security bookworm-security main\n"
            )
        );
        assert_eq!(
            sources_list(""),
            format!(
                "deb [signed-by={KEYRING}] http://deb.debian.org/debian bookworm main\n\
                 deb [signed-by={KEYRING}] http://deb.debian.org/debian bookworm-updates main\n\
                 deb [signed-by={KEYRING}] http://deb.debian.org/debian-security bookworm-security main\n"
            )
        );
    }
}
