//! The programs of the VM legs that are Debian's own, not the lab's: the
//! OpenSSH server, for real SSH sessions, and Python, for the reference
//! daemon. They are taken from a root filesystem of the VM's architecture
//! and release that mmdebstrap builds. `--variant=extract` unpacks the
//! packages and runs none of their maintainer scripts, so no program of the
//! foreign architecture runs on the host (no qemu-user). From that tree the
//! lab takes `sshd` (and, since OpenSSH 9.8, the programs it runs per
//! connection), `python3` and its standard library, their dynamic loader
//! and the libraries they need, read from the ELF files themselves, and
//! places them where the loader looks inside the VM: the loader at its
//! `PT_INTERP` path, every library in `/lib/<triplet>`.

use std::collections::VecDeque;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use flate2::read::GzDecoder;

use super::apt::mmdebstrap;
use super::elf::{check_machine, interpreter, needed_libraries};
use super::{DebianRelease, VmArch};

/// Where sshd is inside the VM (and in Debian's tree).
pub const SSHD: &str = "/usr/sbin/sshd";

/// Where Python is inside the VM: Debian's `python3`, the interpreter
/// itself (not the link to it), so that it finds its standard library
/// beside it in `/usr/lib/python3.N`.
pub const PYTHON: &str = "/usr/bin/python3";

/// What [`take_userland`] took: the files' paths inside the VM and the
/// exact versions of the packages, for the evidence report.
pub(super) struct Userland {
    pub files: Vec<String>,
    /// The apt sources the tree was built from (without the security suite
    /// where the mirror lacks its pool), for the next tree of the release.
    pub sources: String,
    pub openssh_package: String,
    pub python_package: String,
}

/// Builds the root filesystem of `arch` and `release` in `tree` (from the
/// apt `sources`, one-line style) and copies sshd, Python and what they
/// load into `to` at their paths inside the VM.
pub(super) fn take_userland(
    arch: VmArch,
    release: DebianRelease,
    sources: &str,
    tree: &Path,
    to: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Userland> {
    let options = ["--variant=extract", "--include=openssh-server,python3"];
    let sources = mmdebstrap(arch, release, sources, &options, tree, log)?;
    let mut taken = Taken::new(tree, arch);
    let sshd = find_in_tree(tree, SSHD)?;
    let sshd_bytes = fs::read(&sshd).with_context(|| format!("read {}", sshd.display()))?;
    let loader = interpreter(&sshd_bytes)?.context("sshd is not dynamically linked")?;
    taken.add(&loader, find_in_tree(tree, &loader)?);
    for program in SSH_PROGRAMS {
        match find_in_tree(tree, program) {
            Ok(host) => taken.program(program, &host)?,
            Err(_) => ensure!(*program != SSHD, "no {SSHD} in the root filesystem"),
        }
    }
    // Before glibc 2.34 (bullseye), reading /etc/passwd loads this module.
    if find_library(tree, arch, NSS_FILES).is_ok() {
        taken.libraries(vec![NSS_FILES.to_owned()])?;
    }
    let python = python_version(tree)?;
    taken.program(PYTHON, &find_in_tree(tree, PYTHON)?)?;
    let left_out = taken.standard_library(&format!("/usr/lib/{python}"))?;
    if !left_out.is_empty() {
        log(&format!(
            "vm assets ({}, {}): {python} extension modules left out, their libraries not in the tree: {}",
            arch.debian_arch(),
            release.name(),
            left_out.join(" ")
        ));
    }
    for (guest, host) in &taken.files {
        let copy = to.join(guest.trim_start_matches('/'));
        fs::create_dir_all(copy.parent().context("a file has a directory")?)?;
        fs::copy(host, &copy)
            .with_context(|| format!("copy {} to {}", host.display(), copy.display()))?;
    }
    Ok(Userland {
        files: taken.files.into_iter().map(|(guest, _)| guest).collect(),
        sources,
        openssh_package: changelog_version(tree, "openssh-server")?,
        python_package: changelog_version(tree, &python)?,
    })
}

/// sshd, and the programs it runs for each connection since OpenSSH 9.8
/// (`sshd-session`) and 10.0 (`sshd-auth`), where they are.
const SSH_PROGRAMS: &[&str] = &[
    SSHD,
    "/usr/lib/openssh/sshd-session",
    "/usr/lib/openssh/sshd-auth",
];

/// glibc's module for `/etc/passwd` and `/etc/group`, loaded at run time
/// by glibc before 2.34 and built into its libc since.
const NSS_FILES: &str = "libnss_files.so.2";

/// The files taken so far: (path inside the VM, file in the tree).
struct Taken<'tree> {
    tree: &'tree Path,
    arch: VmArch,
    files: Vec<(String, PathBuf)>,
}

impl<'tree> Taken<'tree> {
    fn new(tree: &'tree Path, arch: VmArch) -> Self {
        Self {
            tree,
            arch,
            files: Vec::new(),
        }
    }

    fn has(&self, guest: &str) -> bool {
        self.files.iter().any(|(path, _)| path == guest)
    }

    fn add(&mut self, guest: &str, host: PathBuf) {
        if !self.has(guest) {
            self.files.push((guest.to_owned(), host));
        }
    }

    /// An executable of the architecture, at `guest`, and every library it needs.
    fn program(&mut self, guest: &str, host: &Path) -> Result<()> {
        check_machine(self.arch, host)?;
        let bytes = fs::read(host).with_context(|| format!("read {}", host.display()))?;
        self.add(guest, host.to_path_buf());
        self.libraries(needed_libraries(&bytes)?)
    }

    /// The libraries `names`, and theirs, to the end, in `/lib/<triplet>`.
    fn libraries(&mut self, names: Vec<String>) -> Result<()> {
        let closure = self.closure(names)?;
        for (guest, host) in closure {
            self.add(&guest, host);
        }
        Ok(())
    }

    /// The libraries `names` need, themselves included, that are not taken
    /// yet; an error if one is not in the tree.
    fn closure(&self, names: Vec<String>) -> Result<Vec<(String, PathBuf)>> {
        let lib_dir = format!("/lib/{}", self.arch.gnu_triplet());
        let mut found: Vec<(String, PathBuf)> = Vec::new();
        let mut wanted = VecDeque::from(names);
        while let Some(name) = wanted.pop_front() {
            let guest = format!("{lib_dir}/{name}");
            if self.has(&guest) || found.iter().any(|(path, _)| *path == guest) {
                continue;
            }
            let host = find_library(self.tree, self.arch, &name)?;
            check_machine(self.arch, &host)?;
            let bytes = fs::read(&host).with_context(|| format!("read {}", host.display()))?;
            wanted.extend(needed_libraries(&bytes)?);
            found.push((guest, host));
        }
        Ok(found)
    }

    /// Every file of the standard library in `dir`, links resolved inside
    /// the tree; an extension module comes with the libraries it needs, or
    /// is left out when one is not in the tree (Debian ships those in other
    /// packages): returns the names of those left out.
    fn standard_library(&mut self, dir: &str) -> Result<Vec<String>> {
        let mut left_out = Vec::new();
        let mut pending = vec![dir.to_owned()];
        while let Some(next) = pending.pop() {
            let host_dir = self.tree.join(next.trim_start_matches('/'));
            let entries =
                fs::read_dir(&host_dir).with_context(|| format!("read {}", host_dir.display()))?;
            for entry in entries {
                let entry = entry?;
                let guest = format!("{next}/{}", entry.file_name().to_string_lossy());
                if entry.file_type()?.is_dir() {
                    pending.push(guest);
                    continue;
                }
                // A link that leads out of the tree (sitecustomize.py to
                // /etc) is a file the VM does without.
                let Ok(host) = resolve_in(self.tree, &guest) else {
                    continue;
                };
                if !guest.ends_with(".so") {
                    self.add(&guest, host);
                    continue;
                }
                let bytes = fs::read(&host).with_context(|| format!("read {}", host.display()))?;
                match self.closure(needed_libraries(&bytes)?) {
                    Ok(libraries) => {
                        check_machine(self.arch, &host)?;
                        self.add(&guest, host);
                        for (library, from) in libraries {
                            self.add(&library, from);
                        }
                    }
                    Err(_) => left_out.push(entry.file_name().to_string_lossy().into_owned()),
                }
            }
        }
        left_out.sort();
        Ok(left_out)
    }
}

/// `python3.11`: the interpreter `/usr/bin/python3` links to, which names
/// its standard library's directory and its package.
fn python_version(tree: &Path) -> Result<String> {
    let link = tree.join(PYTHON.trim_start_matches('/'));
    let target = fs::read_link(&link).with_context(|| format!("read the link {PYTHON}"))?;
    let name = target
        .file_name()
        .context("the python3 link has no file name")?
        .to_string_lossy()
        .into_owned();
    ensure!(
        name.starts_with("python3.")
            && name["python3.".len()..].bytes().all(|b| b.is_ascii_digit()),
        "{PYTHON} links to {name}, not to python3.N"
    );
    Ok(name)
}

/// The host path of the file `path` names inside the tree, or, on a
/// release that merged `/usr` (whose tree extracted without base-files
/// lacks the `/lib -> usr/lib` links), of `/usr` + `path`.
fn find_in_tree(tree: &Path, path: &str) -> Result<PathBuf> {
    resolve_in(tree, path)
        .or_else(|error| resolve_in(tree, &format!("/usr{path}")).map_err(|_| error))
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

/// `openssh-server 1:9.2p1-2+deb12u10`: `package` and the version on the
/// first line of its own changelog (no dpkg database is written by an
/// extract).
pub(super) fn changelog_version(tree: &Path, package: &str) -> Result<String> {
    let changelog = tree.join(format!("usr/share/doc/{package}/changelog.Debian.gz"));
    let mut text = String::new();
    GzDecoder::new(fs::File::open(&changelog).with_context(|| changelog.display().to_string())?)
        .read_to_string(&mut text)
        .with_context(|| format!("read {package}'s changelog"))?;
    let version = text
        .lines()
        .next()
        .and_then(|line| line.split_once('(')?.1.split_once(')'))
        .map(|(version, _)| version)
        .with_context(|| format!("no version on the first line of {package}'s changelog"))?;
    Ok(format!("{package} {version}"))
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
