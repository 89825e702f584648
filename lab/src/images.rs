//! The lab's images, built locally and cached by the hash of their inputs:
//! a base root filesystem from `mmdebstrap`, imported with `docker import`,
//! and the lab image and the `cross` toolchain image built `FROM` it. No
//! registry is ever asked: an image is made here or not at all, and its
//! existence is checked before any start.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::host::run;
use crate::report::ImageBuild;

/// The Debian suite of the base image.
pub const SUITE: &str = "bookworm";
/// What the base image holds beyond `--variant=apt`.
pub const BASE_PACKAGES: &[&str] = &["openssh-server", "procps", "iproute2", "iptables"];

/// Repository name of the base image (its tag is the input hash).
const BASE_REPO: &str = "ningen-lab-base";
/// Repository name of the lab image.
const LAB_REPO: &str = "ningen-lab";
/// Repository name of the lab image with systemd as PID 1.
const SYSTEMD_REPO: &str = "ningen-lab-systemd";
/// Repository name of the `cross` toolchain image.
const CROSS_REPO: &str = "ningen-cross";
/// The name Cross.toml gives: fixed, so that file stays static while the
/// cache key is the hash; [`ensure_cross`] points it at the current hash.
pub const CROSS_LOCAL: &str = "ningen-cross:local";

/// The Dockerfile and sshd config, compiled in so the hash is of what is built.
const DOCKERFILE: &str = include_str!("../images/Dockerfile");
const SSHD_CONF: &str = include_str!("../images/lab-sshd.conf");
const CROSS_DOCKERFILE: &str = include_str!("../images/cross.Dockerfile");
const SYSTEMD_DOCKERFILE: &str = include_str!("../images/systemd.Dockerfile");

/// First 16 hex digits of the SHA-256 of `parts`.
pub fn input_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex(&hasher.finalize())[..16].to_owned()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// `name:tag` of the base image for the current inputs.
pub fn base_image() -> String {
    let packages = BASE_PACKAGES.join(",");
    format!(
        "{BASE_REPO}:{}",
        input_hash(&["mmdebstrap --variant=apt", SUITE, &packages])
    )
}

/// `name:tag` of the lab image for the current inputs.
pub fn lab_image() -> String {
    format!(
        "{LAB_REPO}:{}",
        input_hash(&[&base_image(), DOCKERFILE, SSHD_CONF])
    )
}

/// `name:tag` of the systemd image for the current inputs.
pub fn systemd_image() -> String {
    format!(
        "{SYSTEMD_REPO}:{}",
        input_hash(&[&lab_image(), SYSTEMD_DOCKERFILE])
    )
}

/// `name:tag` of the `cross` toolchain image for the current inputs.
pub fn cross_image() -> String {
    format!(
        "{CROSS_REPO}:{}",
        input_hash(&[&base_image(), CROSS_DOCKERFILE])
    )
}

/// Docker's ID of the local `image`.
fn image_id(image: &str) -> Result<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .with_context(|| format!("docker image inspect {image}"))?;
    if !out.status.success() {
        bail!(
            "docker image inspect {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `image` exists locally (never a registry lookup).
pub fn exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Makes the lab's images unless they exist; returns what each cost.
pub fn ensure(work: &Path, log: &mut dyn FnMut(&str)) -> Result<Vec<ImageBuild>> {
    let base = base_image();
    let lab = lab_image();
    let systemd = systemd_image();
    let base_build = timed(&base, || build_base(&base, work, log))?;
    let lab_build = timed(&lab, || build_lab(&lab, &base, work, log))?;
    let systemd_build = timed(&systemd, || {
        build_from_base(
            &systemd,
            &lab,
            &[("Dockerfile", SYSTEMD_DOCKERFILE)],
            work,
            log,
        )
    })?;
    Ok(vec![base_build, lab_build, systemd_build])
}

/// Makes the `cross` toolchain image (and the base image under it) unless it
/// exists, and points [`CROSS_LOCAL`] at it; returns what the toolchain image
/// cost.
pub fn ensure_cross(work: &Path, log: &mut dyn FnMut(&str)) -> Result<ImageBuild> {
    let base = base_image();
    let image = cross_image();
    timed(&base, || build_base(&base, work, log))?;
    let build = timed(&image, || {
        build_from_base(
            &image,
            &base,
            &[("Dockerfile", CROSS_DOCKERFILE)],
            work,
            log,
        )
    })?;
    // Every time, not only after a build: an older hash may still hold the name.
    run(Command::new("docker").args(["tag", &image, CROSS_LOCAL]))
        .with_context(|| format!("docker tag {image} {CROSS_LOCAL}"))?;
    Ok(build)
}

fn timed(image: &str, make: impl FnOnce() -> Result<bool>) -> Result<ImageBuild> {
    let started = Instant::now();
    let built = make()?;
    Ok(ImageBuild {
        id: image_id(image)?,
        image: image.to_owned(),
        cached: !built,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

fn build_base(image: &str, work: &Path, log: &mut dyn FnMut(&str)) -> Result<bool> {
    if exists(image) {
        log(&format!("image {image}: cached"));
        return Ok(false);
    }
    let tar = work.join("rootfs.tar");
    let include = format!("--include={}", BASE_PACKAGES.join(","));
    log(&format!(
        "image {image}: mmdebstrap --variant=apt {include} {SUITE} (about 30-60 s)"
    ));
    run(Command::new("mmdebstrap")
        .args(["--variant=apt", "--quiet", &include, SUITE])
        .arg(&tar))
    .context("mmdebstrap the base root filesystem")?;
    log(&format!("image {image}: docker import"));
    run(Command::new("docker").arg("import").arg(&tar).arg(image))
        .context("docker import the base root filesystem")?;
    let _ = std::fs::remove_file(&tar);
    Ok(true)
}

fn build_lab(image: &str, base: &str, work: &Path, log: &mut dyn FnMut(&str)) -> Result<bool> {
    build_from_base(
        image,
        base,
        &[("Dockerfile", DOCKERFILE), ("lab-sshd.conf", SSHD_CONF)],
        work,
        log,
    )
}

/// `docker build` of `image` from a context holding `files`, `FROM` `base`.
fn build_from_base(
    image: &str,
    base: &str,
    files: &[(&str, &str)],
    work: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<bool> {
    if exists(image) {
        log(&format!("image {image}: cached"));
        return Ok(false);
    }
    if !exists(base) {
        bail!("base image {base} is missing; refusing to let docker look it up in a registry");
    }
    // One context per repository: the lab and `cross` may build side by side.
    let repository = image.split(':').next().unwrap_or(image);
    let context = work.join(format!("{repository}-context"));
    std::fs::create_dir_all(&context)?;
    for (name, text) in files {
        std::fs::write(context.join(name), text)?;
    }
    log(&format!("image {image}: docker build FROM {base}"));
    // The legacy builder: buildx is not installed, and BuildKit would try a registry.
    run(Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--pull=false", "--build-arg"])
        .arg(format!("BASE={base}"))
        .args(["--tag", image])
        .arg(&context))
    .with_context(|| format!("docker build {image}"))?;
    Ok(true)
}
