//! `cargo xtask cross`: the static release executables, `dazai` and
//! `dazai-mcp`, for both shipped targets, built by `cross` in the toolchain
//! image the lab makes locally (Cross.toml names it; no container registry is
//! reachable from the build machines). They land in
//! `target/built/<target>/`, each beside its SHA-256; `cargo xtask dist`
//! ships them once the lab has verified them.
//!
//! `cross` 0.2.5 misreads today's `rustup toolchain list` and runs
//! `rustup toolchain add` for the active toolchain on every build: with a bare
//! channel (`stable`) active, that silently upgrades the host. The workspace's
//! rust-toolchain.toml pins an exact version, so every command here runs in
//! the workspace root, and `prepare` refuses to go on without such a pin.

use std::io::{BufRead, BufReader, ErrorKind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

/// The two static targets the project ships.
pub(crate) const TARGETS: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

/// The executables the project ships for each target: the daemon and its
/// commands, and the MCP layer `dazai mcp` execs.
pub(crate) const EXECUTABLES: [&str; 2] = ["dazai", "dazai-mcp"];

/// The `cross` release the toolchain pitfall and Cross.toml were checked with.
const CROSS_VERSION: &str = "0.2.5";

/// One executable built for shipping, in `target/built`.
pub(crate) struct Built {
    /// One of [`EXECUTABLES`].
    pub name: String,
    /// `target/built/<target>/<name>`.
    pub path: PathBuf,
    /// SHA-256 of the executable, in hex (also in `<name>.sha256` beside it).
    pub sha256: String,
}

/// The verb: prepare, then build the [`EXECUTABLES`] for both [`TARGETS`]
/// and print each path, size and SHA-256.
pub(crate) fn run(sh: &Shell) -> Result<()> {
    println!("==> cross: prepare cross, the rustup targets and the toolchain image");
    prepare(sh)?;
    for target in TARGETS {
        println!("==> cross: dazai and dazai-mcp for {target} (release, --features seccomp)");
        let started = Instant::now();
        for built in build_shipped(sh, target)? {
            let size = std::fs::metadata(&built.path)
                .with_context(|| format!("stat {}", built.path.display()))?
                .len();
            let shown = built
                .path
                .strip_prefix(sh.current_dir())
                .unwrap_or(&built.path);
            println!(
                "    {}  {size} bytes  sha256 {}",
                shown.display(),
                built.sha256,
            );
        }
        println!("    ({:.1} s)", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Makes `cross` usable: installs cross 0.2.5 if `cross` is not on PATH,
/// adds the rustup targets that are missing, and makes the toolchain image
/// (`lab::images::ensure_cross`). Announces each install on one line.
pub(crate) fn prepare(sh: &Shell) -> Result<()> {
    refuse_unpinned_toolchain(sh)?;
    ensure_cross_installed(sh)?;
    ensure_rustup_targets(sh)?;
    ensure_toolchain_image(sh)
}

/// Where [`build_shipped`] leaves the executable `name` of `target`: not
/// in `target/dist`, which only `cargo xtask dist` writes, with executables
/// the lab verified.
pub(crate) fn built_path(root: &Path, target: &str, name: &str) -> PathBuf {
    root.join("target/built").join(target).join(name)
}

/// `cross build --release --target TARGET -p dazai --features seccomp`: each
/// of the [`EXECUTABLES`] copied to [`built_path`] with `<name>.sha256`
/// beside it in `sha256sum` format.
pub(crate) fn build_shipped(sh: &Shell, target: &str) -> Result<Vec<Built>> {
    let executables = build_executables(
        sh,
        target,
        &["build", "--release", "-p", "dazai", "--features", "seccomp"],
    )?;
    let mut shipped = Vec::new();
    for name in EXECUTABLES {
        let (_, built) = executables
            .iter()
            .find(|(built, _)| built == name)
            .with_context(|| format!("cargo reported no {name} executable for {target}; run `cross build --release -p dazai --target {target}` to see why"))?;
        let path = built_path(&sh.current_dir(), target, name);
        let dir = path.parent().context("built path has a directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::copy(built, &path)
            .with_context(|| format!("copy {} to {}", built.display(), path.display()))?;
        let sha256 = lab::images::sha256_file(&path)?;
        let sums = dir.join(format!("{name}.sha256"));
        std::fs::write(&sums, format!("{sha256}  {name}\n"))
            .with_context(|| format!("write {}", sums.display()))?;
        shipped.push(Built {
            name: name.to_owned(),
            path,
            sha256,
        });
    }
    Ok(shipped)
}

/// Runs `cross <cargo_args...> --target TARGET --message-format=json` and
/// returns the executables cargo reported, as (name, host path): the test
/// target's name for a test, the bin's name for a bin. The compiler's
/// diagnostics are echoed to stderr as cargo would render them.
pub(crate) fn build_executables(
    sh: &Shell,
    target: &str,
    cargo_args: &[&str],
) -> Result<Vec<(String, PathBuf)>> {
    let target_dir = target_dir(sh)?;
    let what = format!("cross {} --target {target}", cargo_args.join(" "));
    let mut child = Command::from(cmd!(
        sh,
        "cross {cargo_args...} --target {target} --message-format=json"
    ))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .with_context(|| format!("start `{what}`; run `cargo xtask cross` once to install cross"))?;
    let stdout = child.stdout.take().context("cross's stdout")?;
    let mut executables = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("read the output of `{what}`"))?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            println!("{line}");
            continue;
        };
        match message["reason"].as_str() {
            Some("compiler-message") => {
                if let Some(rendered) = message["message"]["rendered"].as_str() {
                    eprint!("{rendered}");
                }
            }
            Some("compiler-artifact") => {
                if let (Some(name), Some(executable)) = (
                    message["target"]["name"].as_str(),
                    message["executable"].as_str(),
                ) {
                    executables.push((name.to_owned(), host_path(executable, &target_dir)?));
                }
            }
            _ => {}
        }
    }
    let status = child.wait().with_context(|| format!("wait for `{what}`"))?;
    if !status.success() {
        bail!("`{what}` failed ({status}); the compiler's messages are above");
    }
    Ok(executables)
}

/// Refuses a bare channel (`stable`, `beta`, `nightly`): cross 0.2.5 would
/// upgrade it on the host at every build.
fn refuse_unpinned_toolchain(sh: &Shell) -> Result<()> {
    let active = cmd!(sh, "rustup show active-toolchain").quiet().read()?;
    let toolchain = active.split_whitespace().next().unwrap_or_default();
    let (channel, rest) = toolchain.split_once('-').unwrap_or((toolchain, ""));
    let dated = rest.starts_with(|c: char| c.is_ascii_digit());
    if matches!(channel, "stable" | "beta" | "nightly") && !dated {
        bail!("the active toolchain is {active}, a bare channel that cross {CROSS_VERSION} would upgrade on every build; make an exact version active (the workspace's rust-toolchain.toml pins one)");
    }
    println!("    toolchain {toolchain} (pinned)");
    Ok(())
}

fn ensure_cross_installed(sh: &Shell) -> Result<()> {
    if let Some(version) = cross_version(sh)? {
        println!("    {version} present");
        return Ok(());
    }
    println!(
        "    installing cross {CROSS_VERSION} (cargo install --locked, about 3 min on 2 cores)"
    );
    cmd!(sh, "cargo install cross --version {CROSS_VERSION} --locked")
        .run()
        .with_context(|| format!("cargo install cross failed; check that crates.io is reachable, or install cross {CROSS_VERSION} yourself"))?;
    if cross_version(sh)?.is_none() {
        bail!("cross was installed but is not on PATH; add cargo's bin directory (usually ~/.cargo/bin) to PATH");
    }
    Ok(())
}

/// `cross --version`'s first line, or `None` if there is no `cross` on PATH.
fn cross_version(sh: &Shell) -> Result<Option<String>> {
    match Command::from(cmd!(sh, "cross --version")).output() {
        Ok(out) => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::to_owned)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context("run cross --version"),
    }
}

fn ensure_rustup_targets(sh: &Shell) -> Result<()> {
    let installed = cmd!(sh, "rustup target list --installed").quiet().read()?;
    let missing: Vec<&str> = TARGETS
        .into_iter()
        .filter(|target| !installed.lines().any(|line| line == *target))
        .collect();
    if missing.is_empty() {
        println!("    rustup targets present: {}", TARGETS.join(", "));
        return Ok(());
    }
    println!("    adding rustup targets {}", missing.join(", "));
    cmd!(sh, "rustup target add {missing...}")
        .run()
        .context("rustup target add failed; check that static.rust-lang.org is reachable")?;
    Ok(())
}

fn ensure_toolchain_image(sh: &Shell) -> Result<()> {
    let format = "{{.ServerVersion}}";
    if cmd!(sh, "docker info --format {format}")
        .quiet()
        .ignore_stderr()
        .read()
        .is_err()
    {
        bail!("docker does not answer; start dockerd (or install docker.io) and run again");
    }
    let work = sh.current_dir().join("target/cross");
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    let build = lab::images::ensure_cross(&work, &mut |line| println!("    {line}"))?;
    if !build.cached {
        println!(
            "    built {} in {:.1} s",
            build.image,
            build.took_ms as f64 / 1000.0
        );
    }
    Ok(())
}

/// The workspace's target directory, the one `cross` mounts at `/target`.
fn target_dir(sh: &Shell) -> Result<PathBuf> {
    let metadata = cmd!(sh, "cargo metadata --format-version 1 --no-deps")
        .quiet()
        .read()?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parse `cargo metadata`")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` names no target_directory")
}

/// Cargo runs inside the container, so it reports paths under `/target`.
fn host_path(reported: &str, target_dir: &Path) -> Result<PathBuf> {
    let inside = Path::new(reported).strip_prefix("/target").with_context(|| {
        format!("cargo reported {reported}, outside cross's /target; was the build not run in the container?")
    })?;
    Ok(target_dir.join(inside))
}
