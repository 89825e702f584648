//! The kernel modules the VM loads, in the order it must load them, resolved
//! from the kernel package alone: no `depmod` or `modprobe` of the host's.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use super::elf::modinfo_section;

/// Modules the lab loads; their dependencies are resolved from the kernel.
pub(super) const MODULE_ROOTS: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "virtio_blk",
    "virtio_net",
    // The root filesystem of a VM that boots systemd.
    "ext4",
];

/// Modules loaded where the kernel builds them as modules: ext4 before 6.11
/// asks the crypto API for crc32c at every mount, which 6.12 no longer does.
pub(super) const MODULE_ROOTS_IF_PRESENT: &[&str] = &["crc32c_generic"];

/// A module's name as the kernel knows it: file stem, `-` read as `_`
/// (`.ko`, or `.ko.xz` as trixie ships them).
fn module_name(file: &str) -> Option<String> {
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))?;
    Some(stem.rsplit('/').next()?.replace('-', "_"))
}

/// A module's ELF bytes: `.ko.xz` decompressed (with xz-utils' `xz`, which
/// the lab installs), so that neither the scan of its `.modinfo` nor the
/// VM's `insmod` needs xz support.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_none_or(|ext| ext != "xz") {
        return fs::read(path).with_context(|| format!("read {}", path.display()));
    }
    let xz = Command::new("xz")
        .args(["--decompress", "--stdout"])
        .arg(path)
        .output()
        .context("run xz (xz-utils decompresses trixie's modules)")?;
    ensure!(
        xz.status.success(),
        "xz --decompress {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&xz.stderr).trim()
    );
    Ok(xz.stdout)
}

/// Writes the module at `from` to `to`, decompressed.
pub(super) fn write_module(from: &Path, to: &Path) -> Result<()> {
    fs::write(to, read_module(from)?).with_context(|| format!("write {}", to.display()))
}

/// Every `.ko` or `.ko.xz` under `modules_dir/kernel`, by module name.
pub(super) fn module_index(modules_dir: &Path) -> Result<HashMap<String, PathBuf>> {
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
pub(super) fn builtin_names(path: &Path) -> Result<HashSet<String>> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(text.lines().filter_map(module_name).collect())
}

/// `roots` and everything they depend on, each after its dependencies,
/// without built-ins; `depends` gives a module's direct dependencies.
pub(super) fn load_order(
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
pub(super) fn modinfo_depends(path: &Path) -> Result<Vec<String>> {
    let bytes = read_module(path)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_assets::elf::check_machine;
    use crate::vm_assets::VmArch;

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
            ("virtio_blk", &["virtio", "virtio_ring"][..]),
            ("virtio_net", &["net_failover", "virtio", "virtio_ring"][..]),
            ("net_failover", &["failover"][..]),
            ("failover", &[][..]),
            ("ext4", &["jbd2", "mbcache", "crc16"][..]),
            ("jbd2", &[][..]),
            ("mbcache", &[][..]),
            ("crc16", &[][..]),
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
                "9p",
                "virtio_blk",
                "failover",
                "net_failover",
                "virtio_net",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
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
}
