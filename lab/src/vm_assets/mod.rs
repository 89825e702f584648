//! What the lab needs to boot a real Debian kernel under `qemu-system` (TCG)
//! for both architectures: the kernel, the few modules it must load, a static
//! busybox for the initramfs, Debian's root filesystem the VM boots into
//! (systemd, sshd, Python), and a writer for the newc initramfs the lab
//! composes around them.
//!
//! A real kernel is needed because qemu-user implements neither seccomp nor
//! ptrace nor `MADV_DONTDUMP` (docs/lab.md): no security property may be
//! judged under it. Packages are fetched with a private apt state, so the
//! host's `/etc/apt`, `/var/lib/apt` and dpkg architectures stay untouched.

mod apt;
mod arch;
mod elf;
mod initramfs;
mod kernel;
mod modules;
mod release;
mod rootfs;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::host::run;
use crate::images::{input_hash, sha256_file};

pub use arch::VmArch;
pub use initramfs::{write_initramfs, Entry};
pub use release::DebianRelease;
pub use rootfs::{PYTHON, SSHD};

use apt::{
    extract, kernels_newest_first, package_version, sources_list, PrivateApt, HOST_SOURCES, KEYRING,
};
use elf::check_machine;
use kernel::unpack_bzimage;
use modules::{
    builtin_names, load_order, modinfo_depends, module_index, write_module, MODULE_ROOTS,
    MODULE_ROOTS_IF_PRESENT,
};
use rootfs::build_root;

/// A Debian kernel, its modules the lab needs, and a static busybox, for one architecture.
#[derive(Clone, Debug)]
pub struct VmAssets {
    /// The architecture all of these are built for.
    pub arch: VmArch,
    /// The Debian release the kernel and busybox come from.
    pub release: DebianRelease,
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
    /// transport, `virtio_console` (virtio-serial ports), 9p over virtio,
    /// `virtio_blk` (the swap disk, the root filesystem), `virtio_net` (SSH
    /// from the host) and ext4 (the root filesystem), which Debian builds
    /// as modules.
    pub modules: Vec<PathBuf>,
    /// `/bin/busybox` from Debian's `busybox-static` of the architecture.
    pub busybox: PathBuf,
    /// The exact package and version busybox came from, for the evidence report.
    pub busybox_package: String,
    /// An ext4 image of Debian of the architecture and release, with
    /// systemd, sshd and Python, which the VM boots into (see `rootfs.rs`).
    pub root: PathBuf,
    /// The exact `openssh-server` version, for the evidence report.
    pub openssh_package: String,
    /// The exact Python package and version (`python3.11 3.11.2-6+deb12u8`).
    pub python_package: String,
    /// The exact systemd package and version in it.
    pub systemd_package: String,
}

/// The root filesystem's ext4 image, in the cache.
const ROOT_IMAGE: &str = "root.ext4";

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
    openssh_package: String,
    python_package: String,
    systemd_package: String,
    /// The SHA-256 of every file of the cache (path relative to it): a file
    /// changed or cut short since is a cache to fetch again.
    sha256: BTreeMap<String, String>,
}

/// The source of this module, compiled in: how the assets are chosen and
/// cut out of Debian's packages is part of what a cache is made from.
const RECIPE: &[&str] = &[
    include_str!("mod.rs"),
    include_str!("apt.rs"),
    include_str!("elf.rs"),
    include_str!("kernel.rs"),
    include_str!("modules.rs"),
    include_str!("release.rs"),
    include_str!("rootfs.rs"),
];

/// The cache directory of `arch` and `release` for these inputs:
/// `<debian_arch>[-<release>]-<hash>`, the hash over the apt sources (the
/// host's mirror) and [`RECIPE`]. Changing either makes a new cache.
fn cache_dir_for(cache_dir: &Path, arch: VmArch, release: DebianRelease, sources: &str) -> PathBuf {
    let name = release.cache_name(arch.debian_arch());
    let mut inputs = vec![name.as_str(), sources];
    inputs.extend_from_slice(RECIPE);
    cache_dir.join(format!("{name}-{}", input_hash(&inputs)))
}

/// Removes the caches of `dir`'s architecture and release made from other
/// inputs (other hashes, or none: the caches before they had one).
fn remove_other_caches(dir: &Path, arch: VmArch, release: DebianRelease) -> Result<()> {
    let name = release.cache_name(arch.debian_arch());
    let (Some(parent), Some(own)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let other = file_name.to_string_lossy();
        let hashed = other
            .strip_prefix(&format!("{name}-"))
            .is_some_and(|hash| hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
        if file_name != own && (other == name || hashed) {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("remove {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The SHA-256 of every file below `dir` but the manifest, by path relative to it.
fn hash_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut hashes = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).with_context(|| format!("read {}", next.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir)?.to_string_lossy().into_owned();
                if relative != MANIFEST {
                    hashes.insert(relative, sha256_file(&path)?);
                }
            }
        }
    }
    Ok(hashes)
}

/// Downloads the newest kernel of `release`'s series
/// (`linux-image-6.1.0-*-<arch>`, `linux-image-5.10.0-*-<arch>`), its
/// `busybox-static` and a root filesystem for `arch`, and extracts what the
/// lab needs, once for each content of its inputs (the cache directory is named
/// by their hash); a cache whose files no longer hash as recorded is fetched
/// again. Remove the cache directory to fetch a newer kernel.
///
/// apt runs with a private state, cache and sources list (and `arch` as its
/// only architecture), so the host's apt configuration, lists and dpkg
/// architectures are never changed. `log` receives one line per step.
///
/// Building the root filesystem of a foreign `arch` runs its maintainer
/// scripts: its binaries must run through qemu-user meanwhile
/// ([`crate::host::ForeignBinaries`]).
pub fn fetch(
    arch: VmArch,
    release: DebianRelease,
    cache_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<VmAssets> {
    let name = arch.debian_arch();
    let label = format!("{name}, {}", release.name());
    let host = fs::read_to_string(HOST_SOURCES).unwrap_or_default();
    let sources = sources_list(&host, release);
    let dir = cache_dir_for(cache_dir, arch, release, &sources);
    if let Some(assets) = cached(arch, release, &dir) {
        log(&format!(
            "vm assets ({label}): cached in {}: {}, {}, {}, {}",
            dir.display(),
            assets.kernel_package,
            assets.openssh_package,
            assets.python_package,
            assets.systemd_package
        ));
        return Ok(assets);
    }
    // A directory that does not check out is a fetch that died half-way, or
    // a file changed since.
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    remove_other_caches(&dir, arch, release)?;
    let work = dir.join("work");
    log(&format!(
        "vm assets ({label}): apt-get update (private state in {}): {}",
        work.display(),
        sources
            .replace(&format!("deb [signed-by={KEYRING}] "), "")
            .trim_end()
            .replace('\n', ", ")
    ));
    let apt = PrivateApt::create(arch, &work.join("apt"), &sources)?;
    run(apt.command("apt-get").arg("update")).context("apt-get update with the private state")?;

    // `.` and `+` are the only regex metacharacters of the name.
    let (prefix, suffix) = release.kernel_name();
    let literal = |text: &str| text.replace('.', "\\.").replace('+', "\\+");
    let pattern = format!("^{}[0-9]+{}-{name}$", literal(prefix), literal(suffix));
    let found = run(apt
        .command("apt-cache")
        .args(["search", "--names-only", &pattern]))?;
    let candidates = kernels_newest_first(&found, (prefix, suffix), name);
    if candidates.is_empty() {
        bail!(
            "no {prefix}*{suffix}-{name} in the {} suites",
            release.name()
        );
    }
    let debs = work.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    // A mirror's index can name kernels its pool does not hold (seen: 404s
    // for every arm64 kernel of bullseye-security): take the newest that
    // downloads, from whichever suite holds it.
    let mut refused = Vec::new();
    let (kernel, kernel_deb) = loop {
        let Some(kernel) = candidates.get(refused.len()) else {
            bail!(
                "no {prefix}*-{name} could be downloaded: {}",
                refused.join("; ")
            );
        };
        log(&format!("vm assets ({label}): downloading {kernel}"));
        match apt.download(kernel, &debs) {
            Ok(deb) => break (kernel.clone(), deb),
            Err(error) => {
                log(&format!(
                    "vm assets ({label}): {kernel} did not download: {error:#}"
                ));
                refused.push(format!("{kernel}: {error:#}"));
            }
        }
    };
    log(&format!("vm assets ({label}): downloading busybox-static"));
    let busybox_deb = apt.download("busybox-static", &debs)?;

    log(&format!(
        "vm assets ({label}): mmdebstrap --variant=minbase of {} with systemd, sshd and Python, into an ext4 image",
        release.name()
    ));
    let packages = build_root(
        arch,
        release,
        &sources,
        &work.join("rootfs"),
        &dir.join(ROOT_IMAGE),
        log,
    )?;
    log(&format!(
        "vm assets ({label}): extracting the kernel and its modules"
    ));
    let root = work.join("root");
    let usr = release.usr();
    extract(
        &kernel_deb,
        &root,
        &["./boot/vmlinuz-*", &format!("./{usr}lib/modules/*")],
    )?;
    let busybox = format!("{usr}bin/busybox");
    extract(&busybox_deb, &root, &[&format!("./{busybox}")])?;
    let kernel_release = kernel
        .strip_prefix("linux-image-")
        .context("kernel package name")?
        .to_owned();
    let modules_dir = root.join(format!("{usr}lib/modules")).join(&kernel_release);
    let index = module_index(&modules_dir)?;
    let builtin = builtin_names(&modules_dir.join("modules.builtin"))?;
    let roots: Vec<&str> = MODULE_ROOTS
        .iter()
        .chain(
            MODULE_ROOTS_IF_PRESENT
                .iter()
                .filter(|m| index.contains_key(**m)),
        )
        .copied()
        .collect();
    let order = load_order(&roots, &builtin, &mut |module| {
        let path = index.get(module).with_context(|| {
            format!("module {module}: no {module}.ko or {module}.ko.xz in {kernel}")
        })?;
        modinfo_depends(path)
    })?;

    let mut manifest = Manifest {
        kernel_package: package_version(&kernel_deb)?,
        busybox_package: package_version(&busybox_deb)?,
        kernel_release,
        modules: order,
        openssh_package: packages.openssh,
        python_package: packages.python,
        systemd_package: packages.systemd,
        sha256: BTreeMap::new(),
    };
    let assets = assets(arch, release, &dir, &manifest);
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
        write_module(&index[module], to)?;
        check_machine(arch, to)?;
    }
    copy(&root.join(&busybox), &assets.busybox)?;
    check_machine(arch, &assets.busybox)?;
    log(&format!(
        "vm assets ({label}): {}, {}, {}, {}, modules in load order: {}",
        manifest.kernel_package,
        manifest.openssh_package,
        manifest.python_package,
        manifest.systemd_package,
        manifest.modules.join(" ")
    ));

    fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    manifest.sha256 = hash_files(&dir)?;
    let json = serde_json::to_string_pretty(&manifest).context("serialize the manifest")?;
    fs::write(dir.join(MANIFEST), json).context("write the manifest")?;
    Ok(assets)
}

/// The assets of a complete cache, or `None` if the manifest is unreadable
/// (a fetch that died while writing it), or the files are not exactly those
/// it hashed: fetch again.
fn cached(arch: VmArch, release: DebianRelease, dir: &Path) -> Option<VmAssets> {
    let json = fs::read_to_string(dir.join(MANIFEST)).ok()?;
    let manifest: Manifest = serde_json::from_str(&json).ok()?;
    if manifest.sha256.is_empty() || hash_files(dir).ok()? != manifest.sha256 {
        return None;
    }
    let assets = assets(arch, release, dir, &manifest);
    let complete = [&assets.vmlinuz, &assets.busybox, &assets.root]
        .into_iter()
        .chain(&assets.modules)
        .all(|path| path.is_file());
    complete.then_some(assets)
}

/// Where each asset of `manifest` lives in the cache directory `dir`.
fn assets(arch: VmArch, release: DebianRelease, dir: &Path, manifest: &Manifest) -> VmAssets {
    VmAssets {
        arch,
        release,
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
        root: dir.join(ROOT_IMAGE),
        openssh_package: manifest.openssh_package.clone(),
        python_package: manifest.python_package.clone(),
        systemd_package: manifest.systemd_package.clone(),
    }
}

/// Copies `from` to `to`, naming both on failure.
fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of one module, its manifest written as
    /// `fetch` writes it.
    fn make_cache(dir: &Path) {
        for (path, text) in [
            ("vmlinuz", "kernel"),
            ("busybox", "busybox"),
            ("modules/virtio_pci.ko", "module"),
            (ROOT_IMAGE, "ext4"),
        ] {
            let path = dir.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        let manifest = Manifest {
            kernel_release: "6.1.0-41-amd64".into(),
            kernel_package: "linux-image-6.1.0-41-amd64 6.1.158-1".into(),
            busybox_package: "busybox-static 1:1.35.0-4+b3".into(),
            modules: vec!["virtio_pci".into()],
            openssh_package: "openssh-server 1:9.2p1-2+deb12u7".into(),
            python_package: "python3.11 3.11.2-6+deb12u8".into(),
            systemd_package: "systemd 252.38-1~deb12u1".into(),
            sha256: hash_files(dir).unwrap(),
        };
        fs::write(
            dir.join(MANIFEST),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn a_cache_is_used_only_while_its_files_hash_as_recorded() {
        let cache = tempfile::tempdir().unwrap();
        let (arch, release) = (VmArch::X86_64, DebianRelease::Bookworm);
        make_cache(cache.path());
        assert!(cached(arch, release, cache.path()).is_some());

        fs::write(cache.path().join("modules/virtio_pci.ko"), "modulE").unwrap();
        assert!(
            cached(arch, release, cache.path()).is_none(),
            "a changed file"
        );

        make_cache(cache.path());
        fs::write(cache.path().join("modules/extra.ko"), "").unwrap();
        assert!(
            cached(arch, release, cache.path()).is_none(),
            "an added file"
        );

        fs::remove_file(cache.path().join("modules/extra.ko")).unwrap();
        assert!(cached(arch, release, cache.path()).is_some());
        fs::remove_file(cache.path().join("busybox")).unwrap();
        assert!(
            cached(arch, release, cache.path()).is_none(),
            "a missing file"
        );
    }

    #[test]
    fn other_inputs_give_another_cache_and_replace_the_old_one() {
        let cache = tempfile::tempdir().unwrap();
        let (arch, release) = (VmArch::X86_64, DebianRelease::Bookworm);
        let mirror = cache_dir_for(cache.path(), arch, release, "deb http://a/ bookworm main");
        let other = cache_dir_for(cache.path(), arch, release, "deb http://b/ bookworm main");
        assert_ne!(mirror, other);
        let bullseye = cache_dir_for(cache.path(), arch, DebianRelease::Bullseye, "");
        let unhashed = cache.path().join("amd64");
        for dir in [&mirror, &other, &bullseye, &unhashed] {
            fs::create_dir_all(dir).unwrap();
        }

        remove_other_caches(&mirror, arch, release).unwrap();

        assert!(mirror.is_dir() && bullseye.is_dir());
        assert!(!other.exists() && !unhashed.exists());
    }
}
