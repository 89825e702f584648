//! Debian's OpenSSH server for the VM legs' real SSH sessions, taken from a
//! root filesystem of the VM's architecture and release that mmdebstrap
//! builds. `--variant=extract` unpacks the packages and runs none of their
//! maintainer scripts, so no program of the foreign architecture runs on the
//! host (no qemu-user). From that tree the lab takes `sshd` (and, since
//! OpenSSH 9.8, the programs it runs per connection), their dynamic loader
//! and the libraries they need, read from the ELF files themselves,
//! and places them where the loader looks inside the VM: the loader at its
//! `PT_INTERP` path, every library in `/lib/<triplet>`.

use std::collections::VecDeque;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;

use super::elf::{check_machine, interpreter, needed_libraries};
use super::{DebianRelease, VmArch};

/// Where sshd is inside the VM (and in Debian's tree).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Builds the root filesystem of `arch` and `release` in `tree` (from the
/// apt `sources`, one-line style), copies sshd and what it loads into `to`
/// at their paths inside the VM, and returns those paths with the exact
/// `openssh-server` version.
///
/// A mirror can lack a suite's pool for an architecture (seen: every arm64
/// package of bullseye-security answers 404): then the tree is built again
/// without the security suite, and `log` says so.
pub(super) fn take_sshd(
    arch: VmArch,
    release: DebianRelease,
    sources: &str,
    tree: &Path,
    to: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(Vec<String>, String)> {
    if let Err(error) = mmdebstrap(arch, release, sources, tree) {
        let without_security: String = sources
            .lines()
            .filter(|line| !line.contains("-security "))
            .map(|line| format!("{line}\n"))
            .collect();
        log(&format!(
            "vm assets ({}): {error:#}; again without the security suite",
            arch.debian_arch()
        ));
        fs::remove_dir_all(tree).with_context(|| format!("remove {}", tree.display()))?;
        mmdebstrap(arch, release, &without_security, tree)?;
    }
    let sshd = find_in_tree(tree, SSHD)?;
    let sshd_bytes = fs::read(&sshd).with_context(|| format!("read {}", sshd.display()))?;
    let loader = interpreter(&sshd_bytes)?.context("sshd is not dynamically linked")?;
    let mut files = vec![(loader.clone(), find_in_tree(tree, &loader)?)];
    let mut wanted = VecDeque::new();
    for program in PROGRAMS {
        let Ok(host) = find_in_tree(tree, program) else {
            ensure!(*program != SSHD, "no {SSHD} in the root filesystem");
            continue;
        };
        check_machine(arch, &host)?;
        let bytes = fs::read(&host).with_context(|| format!("read {}", host.display()))?;
        wanted.extend(needed_libraries(&bytes)?);
        files.push((program.to_string(), host));
    }
    // Before glibc 2.34 (bullseye), reading /etc/passwd loads this module.
    if find_library(tree, arch, NSS_FILES).is_ok() {
        wanted.push_back(NSS_FILES.to_owned());
    }
    let lib_dir = format!("/lib/{}", arch.gnu_triplet());
    while let Some(name) = wanted.pop_front() {
        let guest = format!("{lib_dir}/{name}");
        if files.iter().any(|(path, _)| *path == guest) {
            continue;
        }
        let host = find_library(tree, arch, &name)?;
        check_machine(arch, &host)?;
        let bytes = fs::read(&host).with_context(|| format!("read {}", host.display()))?;
        wanted.extend(needed_libraries(&bytes)?);
        files.push((guest, host));
    }
    for (guest, host) in &files {
        let copy = to.join(guest.trim_start_matches('/'));
        fs::create_dir_all(copy.parent().context("a file has a directory")?)?;
        fs::copy(host, &copy)
            .with_context(|| format!("copy {} to {}", host.display(), copy.display()))?;
    }
    let version = openssh_version(tree)?;
    Ok((files.into_iter().map(|(guest, _)| guest).collect(), version))
}

/// sshd, and the programs it runs for each connection since OpenSSH 9.8
/// (`sshd-session`) and 10.0 (`sshd-auth`), where they are.
const PROGRAMS: &[&str] = &[
    SSHD,
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
];

/// glibc's module for `/etc/passwd` and `/etc/group`, loaded at run time
/// by glibc before 2.34 and built into its libc since.
const NSS_FILES: &str = "libnss_files.so.2";

/// The host path of the file `path` names inside the tree, or, on a
/// release that merged `/usr` (whose tree extracted without base-files
/// lacks the `/lib -> usr/lib` links), of `/usr` + `path`.
fn find_in_tree(tree: &Path, path: &str) -> Result<PathBuf> {
    resolve_in(tree, path)
        .or_else(|error| resolve_in(tree, &format!("/usr{path}")).map_err(|_| error))
}

/// `mmdebstrap --variant=extract` of openssh-server and what it depends on.
fn mmdebstrap(arch: VmArch, release: DebianRelease, sources: &str, tree: &Path) -> Result<()> {
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--quiet", "--variant=extract", "--include=openssh-server"])
        .arg(format!("--arch={}", arch.debian_arch()))
        .args(["--format=directory", release.suites()[0].0])
        .arg(tree)
        .args(sources.lines());
    let ran = mmdebstrap.output().context("run mmdebstrap")?;
    if !ran.status.success() {
        // apt's own lines name what failed; mmdebstrap's last line does not.
        let said = String::from_utf8_lossy(&ran.stderr);
        let errors: Vec<&str> = said
            .lines()
            .filter(|line| {
                line.starts_with("E:") || line.starts_with("Err:") || line.contains("404")
            })
            .take(4)
            .collect();
        bail!(
            "mmdebstrap {} for {}: {}",
            release.suites()[0].0,
            arch.debian_arch(),
            errors.join(" / ")
        );
    }
    Ok(())
}

/// The library `name` among the tree's library directories, as the loader
/// would search them.
fn find_library(tree: &Path, arch: VmArch, name: &str) -> Result<PathBuf> {
    let triplet = arch.gnu_triplet();
    let dirs = [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib".to_owned(),
        "/usr/lib".to_owned(),
    ];
    dirs.iter()
        .find_map(|dir| find_in_tree(tree, &format!("{dir}/{name}")).ok())
        .with_context(|| format!("no {name} in the root filesystem's library directories"))
}

/// The host path of the regular file that `path` names inside the tree
/// `root`, following symbolic links as the VM would: an absolute target
/// (Debian's `/lib64/ld-linux-x86-64.so.2` points to one) starts again at
/// `root`, never at the host's `/`.
fn resolve_in(root: &Path, path: &str) -> Result<PathBuf> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<String> = path.split('/').map(str::to_owned).collect();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate = resolved.join(&part);
        let meta = fs::symlink_metadata(root.join(&candidate))
            .with_context(|| format!("{path}: no {} in the tree", candidate.display()))?;
        if !meta.file_type().is_symlink() {
            resolved = candidate;
            continue;
        }
        links += 1;
        ensure!(links <= 40, "{path}: too many symbolic links");
        let target = fs::read_link(root.join(&candidate))?;
        let target = target.to_string_lossy();
        if target.starts_with('/') {
            resolved = PathBuf::new();
        }
        let mut next: VecDeque<String> = target.split('/').map(str::to_owned).collect();
        next.extend(pending);
        pending = next;
    }
    let host = root.join(resolved);
    if !host.is_file() {
        bail!("{path} is not a file in the tree");
    }
    Ok(host)
}

/// `openssh-server 1:9.2p1-2+deb12u10`, from the first line of the
/// package's own changelog (no dpkg database is written by an extract).
fn openssh_version(tree: &Path) -> Result<String> {
    let changelog = tree.join("usr/share/doc/openssh-server/changelog.Debian.gz");
    let mut text = String::new();
    GzDecoder::new(fs::File::open(&changelog).with_context(|| changelog.display().to_string())?)
        .read_to_string(&mut text)
        .context("read openssh-server's changelog")?;
    let version = text
        .lines()
        .next()
        .and_then(|line| line.split_once('(')?.1.split_once(')'))
        .map(|(version, _)| version)
        .context("no version on the changelog's first line")?;
    Ok(format!("openssh-server {version}"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn links_resolve_inside_the_tree_even_when_absolute() {
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).unwrap();
        fs::create_dir_all(root.join("lib64")).unwrap();
        fs::write(root.join("lib/x86_64-linux-gnu/ld-2.so"), b"loader").unwrap();
        symlink("ld-2.so", root.join("lib/x86_64-linux-gnu/ld-linux.so.2")).unwrap();
        // Absolute, as Debian ships it: must not lead to the host's /lib.
        symlink(
            "/lib/x86_64-linux-gnu/ld-linux.so.2",
            root.join("lib64/ld-linux.so.2"),
        )
        .unwrap();
        symlink("../../etc", root.join("lib64/up")).unwrap();
        let found = resolve_in(root, "/lib64/ld-linux.so.2").unwrap();
        assert_eq!(found, root.join("lib/x86_64-linux-gnu/ld-2.so"));
        assert!(resolve_in(root, "/lib64/missing").is_err());
        // `..` stops at the tree's root, as at `/`.
        assert!(resolve_in(root, "/lib64/up/passwd").is_err());
        symlink("loop", root.join("lib64/loop")).unwrap();
        assert!(resolve_in(root, "/lib64/loop").is_err());
    }
}
