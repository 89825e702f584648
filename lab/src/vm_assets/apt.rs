//! Debian packages fetched by apt with a private state, cache, sources list
//! and architecture, so the host's `/etc/apt`, `/var/lib/apt` and dpkg
//! architectures stay untouched; and the choice of the kernel among them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

use super::{DebianRelease, VmArch};
use crate::host::run;

/// Where the host names its Debian mirror, so the lab uses the same one.
pub(super) const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The host's Debian archive keyring: packages are verified as apt always does.
pub(super) const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A one-line-style sources list of `release`'s suites, each from the URI
/// the host's deb822 `sources` names for it.
pub(super) fn sources_list(host_deb822: &str, release: DebianRelease) -> String {
    release
        .suites()
        .iter()
        .map(|(suite, default)| {
            let uri = deb822_uri(host_deb822, suite).unwrap_or(default);
            format!("deb [signed-by={KEYRING}] {uri} {suite} main\n")
        })
        .collect()
}

/// Builds a root filesystem of `arch` and `release` in the directory `tree`
/// with `mmdebstrap OPTIONS`, from the apt `sources` (one-line style).
///
/// A mirror can lack a suite's pool for an architecture (seen: every arm64
/// package of bullseye-security answers 404): then the tree is built again
/// without the security suite, and `log` says so.
pub(super) fn mmdebstrap(
    arch: VmArch,
    release: DebianRelease,
    sources: &str,
    options: &[&str],
    tree: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let Err(error) = mmdebstrap_once(arch, release, sources, options, tree) else {
        return Ok(());
    };
    let without_security: String = sources
        .lines()
        .filter(|line| !line.contains("-security "))
        .map(|line| format!("{line}\n"))
        .collect();
    log(&format!(
        "vm assets ({}, {}): {error:#}; again without the security suite",
        arch.debian_arch(),
        release.name()
    ));
    if tree.exists() {
        fs::remove_dir_all(tree).with_context(|| format!("remove {}", tree.display()))?;
    }
    mmdebstrap_once(arch, release, &without_security, options, tree)
}

fn mmdebstrap_once(
    arch: VmArch,
    release: DebianRelease,
    sources: &str,
    options: &[&str],
    tree: &Path,
) -> Result<()> {
    let suite = release.suites()[0].0;
    let ran = Command::new("mmdebstrap")
        .arg("--quiet")
        .args(options)
        .arg(format!("--arch={}", arch.debian_arch()))
        .args(["--format=directory", suite])
        .arg(tree)
        .args(sources.lines())
        .output()
        .context("run mmdebstrap")?;
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
            "mmdebstrap {suite} for {}: {}",
            arch.debian_arch(),
            errors.join(" / ")
        );
    }
    Ok(())
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

/// Every `<prefix>N<suffix>-<arch>` (`linux-image-6.1.0-41-amd64`,
/// `linux-image-6.12.117+deb13-amd64`) among `apt-cache search` lines,
/// newest first by N (numerically: 9 is older than 41).
pub(super) fn kernels_newest_first(
    search: &str,
    (prefix, suffix): (&str, &str),
    debian_arch: &str,
) -> Vec<String> {
    let suffix = format!("{suffix}-{debian_arch}");
    let mut kernels: Vec<(u32, &str)> = search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|package| {
            let abi = package.strip_prefix(prefix)?.strip_suffix(&suffix)?;
            Some((abi.parse::<u32>().ok()?, package))
        })
        .collect();
    kernels.sort_unstable_by(|a, b| b.cmp(a));
    kernels
        .into_iter()
        .map(|(_, package)| package.to_owned())
        .collect()
}

/// apt with its own state, cache, sources, preferences and architecture:
/// nothing of the host's apt is written, and only its apt.conf.d (a proxy,
/// say) still applies.
pub(super) struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    /// Lays out the private directories under `root` for `sources`.
    pub(super) fn create(arch: VmArch, root: &Path, sources: &str) -> Result<Self> {
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
    pub(super) fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.arg("-q").args(&self.options);
        command
    }

    /// Downloads `package` into `dir`, its candidate or else the newest older
    /// version that downloads (a mirror's index can name a `.deb` its pool
    /// does not hold: seen for bullseye-security's arm64 packages); returns
    /// the `.deb`.
    pub(super) fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        let fetch = |spec: &str| {
            run(self
                .command("apt-get")
                .current_dir(dir)
                .args(["download", spec]))
            .with_context(|| format!("download {spec}"))
        };
        if let Err(candidate) = fetch(package) {
            let versions = run(self.command("apt-cache").args(["madison", package]))?;
            let older = versions
                .lines()
                .filter_map(|line| line.split('|').nth(1).map(str::trim))
                .skip(1);
            let mut fetched = false;
            for version in older {
                if fetch(&format!("{package}={version}")).is_ok() {
                    fetched = true;
                    break;
                }
            }
            if !fetched {
                return Err(candidate.context(format!("no version of {package} downloads")));
            }
        }
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
pub(super) fn package_version(deb: &Path) -> Result<String> {
    run(Command::new("dpkg-deb")
        .args(["--show", "--showformat=${Package} ${Version}"])
        .arg(deb))
}

/// Extracts the members of `deb` matching `patterns` (tar wildcards) into `to`;
/// a pattern that matches nothing is an error.
pub(super) fn extract(deb: &Path, to: &Path, patterns: &[&str]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_ordered_by_abi_number_and_other_flavours_skipped() {
        let search = "\
linux-image-6.1.0-9-arm64 - Linux 6.1 for 64-bit ARMv8 machines (signed)
linux-image-6.1.0-41-arm64 - Linux 6.1 for 64-bit ARMv8 machines (signed)
linux-image-6.1.0-56-rt-arm64 - Linux 6.1 for 64-bit ARMv8 machines, PREEMPT_RT
linux-image-6.1.0-57-cloud-arm64 - Linux 6.1 for arm64 cloud
linux-image-6.1.0-58-arm64-dbg - Debug symbols
linux-image-6.1.0-41-amd64 - Linux 6.1 for 64-bit PCs (signed)
";
        assert_eq!(
            kernels_newest_first(search, ("linux-image-6.1.0-", ""), "arm64"),
            ["linux-image-6.1.0-41-arm64", "linux-image-6.1.0-9-arm64"]
        );
        assert!(kernels_newest_first(search, ("linux-image-6.1.0-", ""), "armhf").is_empty());
        assert_eq!(
            kernels_newest_first(
                "linux-image-5.10.0-33-amd64 - Linux 5.10\n",
                ("linux-image-5.10.0-", ""),
                "amd64"
            ),
            ["linux-image-5.10.0-33-amd64"]
        );
        let trixie = "\
linux-image-6.12.107+deb13-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.117+deb13-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.117+deb13-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.117+deb13-cloud-amd64 - Linux 6.12 for x86-64 cloud
";
        assert_eq!(
            kernels_newest_first(trixie, ("linux-image-6.12.", "+deb13"), "amd64"),
            [
                "linux-image-6.12.117+deb13-amd64",
                "linux-image-6.12.107+deb13-amd64"
            ]
        );
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
            sources_list(host, DebianRelease::Bookworm),
            format!(
                "deb [signed-by={KEYRING}] http://mirror.example/debian bookworm main\n\
                 deb [signed-by={KEYRING}] http://mirror.example/debian bookworm-updates main\n\
                 deb [signed-by={KEYRING}] http://mirror.example/debian-security bookworm-security main\n"
            )
        );
        assert_eq!(
            sources_list("", DebianRelease::Bookworm),
            format!(
                "deb [signed-by={KEYRING}] http://deb.debian.org/debian bookworm main\n\
                 deb [signed-by={KEYRING}] http://deb.debian.org/debian bookworm-updates main\n\
                 deb [signed-by={KEYRING}] http://deb.debian.org/debian-security bookworm-security main\n"
            )
        );
    }
}
