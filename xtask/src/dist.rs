//! `cargo xtask dist`: the release directory, made only of binaries the lab
//! verified. In order, each step announced on one line:
//!
//! 1. the lab, every leg (it builds both targets with `cross` first, into
//!    `target/built/<target>/{dazai,dazai-mcp}`); a red row stops here;
//! 2. each built executable is read once and hashed: every leg of its
//!    architecture must have tested exactly that SHA-256 (x86_64: the
//!    containers and the VMs; aarch64: the VMs), and every check of those legs
//!    must be green; otherwise nothing is packaged;
//! 3. `target/dist/` is written whole (in a scratch directory, then renamed):
//!    `dazai-<target>` and `dazai-mcp-<target>` (the bytes that were hashed),
//!    the man pages and shell completions (`man/`, `completions/`, generated
//!    from the same source by `cargo xtask man`), `SHA256SUMS`, the lab's
//!    `lab-report.json` and `lab-report.md`, and `provenance.json` (source
//!    commit, toolchain versions, images, the lab's results per hash);
//! 4. with `DAZAI_SIGNING_KEY` naming an SSH private key (or
//!    `DAZAI_SIGNING_KEY_CONTENT` holding one), `SHA256SUMS.sig`
//!    (`ssh-keygen -Y sign -n dazai-release`; docs/release.md verifies it).

pub(crate) mod provenance;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

/// The namespace of the release signature (`ssh-keygen -Y … -n`).
pub(crate) const SIGNATURE_NAMESPACE: &str = "dazai-release";

/// Which legs must have tested a binary of each architecture.
const REQUIRED_LEGS: [(&str, &[&str]); 2] = [
    (
        "x86_64",
        &[
            "x86_64 containers",
            "x86_64 VM",
            "x86_64 VM 5.10 (Debian 11)",
            "x86_64 VM 6.1 secretmem off (Debian 12)",
            "x86_64 VM 6.12 (Debian 13)",
        ],
    ),
    (
        "aarch64",
        &[
            "aarch64 VM",
            "aarch64 VM 5.10 (Debian 11)",
            "aarch64 VM 6.1 secretmem off (Debian 12)",
            "aarch64 VM 6.12 (Debian 13)",
        ],
    ),
];

/// One executable to ship.
pub(crate) struct Artifact {
    /// Which: one of `cross::EXECUTABLES`.
    pub name: String,
    /// Its target triple.
    pub target: String,
    /// Where the build left it.
    pub built: PathBuf,
}

impl Artifact {
    fn arch(&self) -> &str {
        self.target.split('-').next().unwrap_or_default()
    }

    fn file_name(&self) -> String {
        format!("{}-{}", self.name, self.target)
    }

    /// The SHA-256 a leg of the lab report says it tested for this executable.
    fn tested_by<'leg>(&self, leg: &'leg Value) -> &'leg str {
        let tested = match self.name.as_str() {
            "dazai" => &leg["dazai_sha256"],
            other => &leg["tools_sha256"][other],
        };
        tested.as_str().unwrap_or_default()
    }
}

/// What the release was made from, for `provenance.json`.
pub(crate) struct Origin {
    /// `git rev-parse HEAD`.
    pub commit: String,
    /// Whether the work tree had changes not in that commit.
    pub dirty: bool,
    /// `rustc -V`, `cargo -V`, `cross --version`, by tool.
    pub toolchain: Vec<(String, String)>,
    /// The image `cross` built in (`name:input-hash`).
    pub toolchain_image: String,
}

pub(crate) fn run(sh: &Shell) -> Result<()> {
    // Read before anything is built: the commit is what the binaries come from.
    let origin = origin(sh)?;
    if origin.dirty {
        bail!("refusing to make a release from a work tree with uncommitted changes: the provenance would name a commit the binaries do not come from; commit or stash them");
    }
    step("the lab, every leg (it builds both targets with cross)");
    let run_id = crate::lab::run(sh, &crate::lab::Options::default())?;
    let root = sh.current_dir();
    let report_dir = root.join("target/lab");
    let artifacts: Vec<Artifact> = crate::cross::TARGETS
        .iter()
        .flat_map(|target| {
            crate::cross::EXECUTABLES.map(|name| Artifact {
                name: name.to_owned(),
                target: target.to_string(),
                built: crate::cross::built_path(&root, target, name),
            })
        })
        .collect();
    step("check every binary against the hashes the lab tested, and write target/dist");
    let out = root.join("target/dist");
    package(&report_dir, &run_id, &artifacts, &origin, &out)?;
    match SigningKey::from_env()? {
        Some(key) => {
            step("sign SHA256SUMS");
            sign(sh, &key.path, &out)?;
        }
        None => println!(
            "    neither DAZAI_SIGNING_KEY nor DAZAI_SIGNING_KEY_CONTENT is set: SHA256SUMS is not signed"
        ),
    }
    for entry in std::fs::read_dir(&out)? {
        println!("    {}", entry?.path().display());
    }
    Ok(())
}

fn step(title: &str) {
    println!("==> dist: {title}");
}

/// Checks every artifact against the lab report in `report_dir` and, only if
/// all of them were verified, replaces `out` with the release directory.
pub(crate) fn package(
    report_dir: &Path,
    run_id: &str,
    artifacts: &[Artifact],
    origin: &Origin,
    out: &Path,
) -> Result<()> {
    let report_json = std::fs::read_to_string(report_dir.join("report.json"))
        .context("read the lab's report.json (run the lab first)")?;
    let report: Value = serde_json::from_str(&report_json).context("parse report.json")?;
    if report["run_id"] != run_id {
        bail!(
            "refusing to package: report.json is of lab run {}, not of this one ({run_id})",
            report["run_id"]
        );
    }
    let scratch = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let mut sums = String::new();
    let mut subjects = Vec::new();
    for artifact in artifacts {
        // The bytes hashed are the bytes shipped: no window to swap the file.
        let bytes = std::fs::read(&artifact.built)
            .with_context(|| format!("read {}", artifact.built.display()))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let verified_by = verifying_legs(&report, artifact, &sha256)?;
        let name = artifact.file_name();
        let path = scratch.join(&name);
        std::fs::write(&path, &bytes)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        sums.push_str(&format!("{sha256}  {name}\n"));
        subjects.push(provenance::Subject {
            name,
            sha256,
            target: artifact.target.clone(),
            size: bytes.len(),
            verified_by,
        });
    }
    for generated in crate::man::write_all(&scratch)? {
        let bytes = std::fs::read(&generated)?;
        let name = generated
            .strip_prefix(&scratch)
            .context("generated under the release directory")?
            .display()
            .to_string();
        sums.push_str(&format!("{}  {name}\n", hex(&Sha256::digest(&bytes))));
    }
    std::fs::write(scratch.join("SHA256SUMS"), &sums)?;
    std::fs::write(scratch.join("lab-report.json"), &report_json)?;
    std::fs::copy(report_dir.join("report.md"), scratch.join("lab-report.md"))
        .context("copy the lab's report.md")?;
    let report_sha256 = hex(&Sha256::digest(report_json.as_bytes()));
    let statement = provenance::statement(origin, run_id, &subjects, &report, &report_sha256);
    std::fs::write(
        scratch.join("provenance.json"),
        serde_json::to_string_pretty(&statement)?,
    )?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&scratch, out)
        .with_context(|| format!("move {} to {}", scratch.display(), out.display()))?;
    Ok(())
}

/// The legs that tested exactly `sha256` for the artifact's architecture,
/// with their results; an error unless every required leg did and all of
/// their checks are green.
fn verifying_legs(report: &Value, artifact: &Artifact, sha256: &str) -> Result<Vec<Value>> {
    let arch = artifact.arch();
    let required = REQUIRED_LEGS
        .iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, legs)| *legs)
        .with_context(|| format!("no lab legs are defined for {arch}"))?;
    let legs = report["legs"].as_array().cloned().unwrap_or_default();
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    let mut verified_by = Vec::new();
    for name in required {
        let Some(leg) = legs.iter().find(|leg| leg["name"] == *name) else {
            bail!(
                "refusing to package {}: the lab report has no {name} leg",
                artifact.file_name()
            );
        };
        let tested = artifact.tested_by(leg);
        if tested != sha256 {
            bail!(
                "refusing to package {}: its SHA-256 is {sha256}, but the {name} leg tested {tested}",
                artifact.file_name()
            );
        }
        let of_leg: Vec<&Value> = checks.iter().filter(|c| c["leg"] == *name).collect();
        let missing: Vec<&str> = lab::scenarios::ALL
            .iter()
            .map(|scenario| scenario.row)
            .filter(|row| !of_leg.iter().any(|c| c["row"] == *row))
            .collect();
        if !missing.is_empty() {
            bail!(
                "refusing to package {}: the {name} leg has no check of {}",
                artifact.file_name(),
                missing.join(", ")
            );
        }
        let count = |outcome: &str| of_leg.iter().filter(|c| c["outcome"] == outcome).count();
        if of_leg.is_empty() || count("fail") > 0 {
            bail!(
                "refusing to package {}: the {name} leg has {} checks, {} of them red",
                artifact.file_name(),
                of_leg.len(),
                count("fail")
            );
        }
        verified_by.push(json!({
            "leg": name,
            "kernel": leg["kernel"],
            "checks": of_leg.len(),
            "pass": count("pass"),
            "limit_shown": count("limit"),
        }));
    }
    Ok(verified_by)
}

/// The source commit and the toolchain's versions.
fn origin(sh: &Shell) -> Result<Origin> {
    let commit = cmd!(sh, "git rev-parse HEAD").quiet().read()?;
    let dirty = !cmd!(sh, "git status --porcelain")
        .quiet()
        .read()?
        .trim()
        .is_empty();
    let mut toolchain = Vec::new();
    for (tool, version) in [
        ("rustc", cmd!(sh, "rustc -V")),
        ("cargo", cmd!(sh, "cargo -V")),
        ("cross", cmd!(sh, "cross --version")),
    ] {
        let text = version.quiet().read()?;
        toolchain.push((
            tool.to_owned(),
            text.lines().next().unwrap_or("").to_owned(),
        ));
    }
    Ok(Origin {
        commit,
        dirty,
        toolchain,
        toolchain_image: lab::images::cross_image(),
    })
}

/// The SSH private key that signs `SHA256SUMS`: the file `DAZAI_SIGNING_KEY`
/// names, or the key itself in `DAZAI_SIGNING_KEY_CONTENT` (how a workflow
/// secret arrives), written to a file only its owner can read and removed
/// when the release is made.
struct SigningKey {
    path: PathBuf,
    written: bool,
}

impl SigningKey {
    fn from_env() -> Result<Option<SigningKey>> {
        if let Some(path) = std::env::var_os("DAZAI_SIGNING_KEY") {
            return Ok(Some(SigningKey {
                path: path.into(),
                written: false,
            }));
        }
        let Some(content) = std::env::var_os("DAZAI_SIGNING_KEY_CONTENT") else {
            return Ok(None);
        };
        let path = std::env::temp_dir().join(format!("dazai-release-key-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        // ssh-keygen wants the key's last line ended.
        file.write_all(content.as_encoded_bytes())?;
        file.write_all(b"\n")?;
        Ok(Some(SigningKey {
            path,
            written: true,
        }))
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        if self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `SHA256SUMS.sig` beside `SHA256SUMS`, made with the SSH private key `key`.
pub(crate) fn sign(sh: &Shell, key: &Path, out: &Path) -> Result<()> {
    let sums = out.join("SHA256SUMS");
    cmd!(
        sh,
        "ssh-keygen -q -Y sign -f {key} -n {SIGNATURE_NAMESPACE} {sums}"
    )
    .run()
    .context("ssh-keygen -Y sign (DAZAI_SIGNING_KEY must name an SSH private key)")?;
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN_ID: &str = "4242-1";

    /// Both executables for both targets and a lab report that tested exactly them, green.
    struct Fixture {
        dir: tempfile::TempDir,
        artifacts: Vec<Artifact>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut artifacts = Vec::new();
        let mut legs = Vec::new();
        let mut checks = Vec::new();
        for (arch, target) in [
            ("x86_64", "x86_64-unknown-linux-musl"),
            ("aarch64", "aarch64-unknown-linux-musl"),
        ] {
            let mut shas = Vec::new();
            for name in crate::cross::EXECUTABLES {
                let built = dir.path().join(format!("built-{name}-{target}"));
                let bytes = format!("\x7fELF a {name} for {target}").into_bytes();
                std::fs::write(&built, &bytes).unwrap();
                shas.push(hex(&Sha256::digest(&bytes)));
                artifacts.push(Artifact {
                    name: name.to_owned(),
                    target: target.to_owned(),
                    built,
                });
            }
            let (sha, mcp_sha) = (&shas[0], &shas[1]);
            let required = REQUIRED_LEGS.iter().find(|(a, _)| *a == arch).unwrap().1;
            for leg in required {
                legs.push(json!({
                    "name": leg, "arch": arch, "kernel": "6.1.0",
                    "dazai_sha256": sha, "tools_sha256": { "dazai-mcp": mcp_sha },
                }));
                // Every row the leg runs, one of them a limit shown.
                for scenario in lab::scenarios::ALL {
                    let outcome = if scenario.row == "OOM" {
                        "limit"
                    } else {
                        "pass"
                    };
                    checks.push(json!({ "leg": leg, "row": scenario.row, "outcome": outcome }));
                }
            }
        }
        let report = json!({ "run_id": RUN_ID, "legs": legs, "checks": checks, "images": [] });
        std::fs::write(dir.path().join("report.json"), report.to_string()).unwrap();
        std::fs::write(dir.path().join("report.md"), "| table |\n").unwrap();
        Fixture { dir, artifacts }
    }

    fn origin() -> Origin {
        Origin {
            commit: "0123abcd".into(),
            dirty: false,
            toolchain: vec![("rustc".into(), "rustc 1.95.0".into())],
            toolchain_image: "ningen-cross:0000".into(),
        }
    }

    #[test]
    fn a_binary_changed_by_one_byte_after_the_lab_ran_is_not_packaged() {
        let f = fixture();
        let out = f.dir.path().join("dist");
        package(f.dir.path(), RUN_ID, &f.artifacts, &origin(), &out)
            .expect("verified binaries package");
        assert!(out.join("dazai-aarch64-unknown-linux-musl").is_file());

        let mcp = f
            .artifacts
            .iter()
            .find(|a| a.file_name() == "dazai-mcp-aarch64-unknown-linux-musl")
            .unwrap();
        let mut bytes = std::fs::read(&mcp.built).unwrap();
        bytes[5] ^= 1;
        std::fs::write(&mcp.built, &bytes).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        let refused = package(f.dir.path(), RUN_ID, &f.artifacts, &origin(), &out).unwrap_err();
        assert!(
            format!("{refused:#}")
                .contains("refusing to package dazai-mcp-aarch64-unknown-linux-musl"),
            "{refused:#}"
        );
        assert!(!out.exists(), "nothing is written when one binary fails");
    }

    #[test]
    fn a_red_check_in_a_required_leg_refuses_the_release() {
        let f = fixture();
        let path = f.dir.path().join("report.json");
        let mut report: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        report["checks"][0]["outcome"] = json!("fail");
        std::fs::write(&path, report.to_string()).unwrap();
        let out = f.dir.path().join("dist");
        let refused = package(f.dir.path(), RUN_ID, &f.artifacts, &origin(), &out).unwrap_err();
        assert!(
            format!("{refused:#}").contains("1 of them red"),
            "{refused:#}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn a_report_of_another_lab_run_is_refused() {
        let f = fixture();
        let out = f.dir.path().join("dist");
        let refused = package(f.dir.path(), "4242-2", &f.artifacts, &origin(), &out).unwrap_err();
        assert!(refused.to_string().contains("not of this one"), "{refused}");
        assert!(!out.exists());
    }

    #[test]
    fn a_leg_without_every_row_refuses_the_release() {
        let f = fixture();
        let path = f.dir.path().join("report.json");
        let mut report: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        report["checks"]
            .as_array_mut()
            .unwrap()
            .retain(|c| !(c["leg"] == "aarch64 VM" && c["row"] == "confinement"));
        std::fs::write(&path, report.to_string()).unwrap();
        let out = f.dir.path().join("dist");
        let refused = package(f.dir.path(), RUN_ID, &f.artifacts, &origin(), &out).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("the aarch64 VM leg has no check of confinement"),
            "{refused}"
        );
    }

    #[test]
    fn the_provenance_parses_and_names_every_artifact_with_its_checksum() {
        let f = fixture();
        let out = f.dir.path().join("dist");
        package(f.dir.path(), RUN_ID, &f.artifacts, &origin(), &out).unwrap();
        let provenance: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("provenance.json")).unwrap())
                .unwrap();
        assert_eq!(provenance["_type"], provenance::STATEMENT_TYPE);
        assert_eq!(provenance["predicateType"], provenance::PREDICATE_TYPE);
        assert_eq!(
            provenance["predicate"]["buildDefinition"]["buildType"],
            provenance::BUILD_TYPE
        );
        assert_eq!(provenance::source_commit(&provenance), Some("0123abcd"));
        assert_eq!(
            provenance["predicate"]["runDetails"]["metadata"]["invocationId"],
            RUN_ID
        );
        let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
        let named = provenance["subject"].as_array().unwrap();
        assert_eq!(named.len(), f.artifacts.len());
        for subject in named {
            let name = subject["name"].as_str().unwrap();
            let bytes = std::fs::read(out.join(name)).unwrap();
            let sha = hex(&Sha256::digest(&bytes));
            assert_eq!(subject["digest"]["sha256"], sha.as_str());
            assert!(sums.contains(&format!("{sha}  {name}\n")), "{sums}");
            assert!(!subject["annotations"]["verified_by"]
                .as_array()
                .unwrap()
                .is_empty());
        }
        for generated in ["man/dazai-mcp-serve.1", "completions/_dazai"] {
            let sha = hex(&Sha256::digest(std::fs::read(out.join(generated)).unwrap()));
            assert!(sums.contains(&format!("{sha}  {generated}\n")), "{sums}");
        }
        let report = std::fs::read(out.join("lab-report.json")).unwrap();
        let byproducts = &provenance["predicate"]["runDetails"]["byproducts"];
        assert_eq!(
            byproducts[0]["digest"]["sha256"],
            hex(&Sha256::digest(&report)).as_str(),
            "the statement names the report it ships with"
        );
        assert!(out.join("lab-report.json").is_file() && out.join("lab-report.md").is_file());
    }

    #[test]
    fn a_signed_sha256sums_verifies_with_the_documented_command() {
        let f = fixture();
        let out = f.dir.path().join("dist");
        package(f.dir.path(), RUN_ID, &f.artifacts, &origin(), &out).unwrap();
        let sh = Shell::new().unwrap();
        let key = f.dir.path().join("release_key");
        cmd!(
            sh,
            "ssh-keygen -q -t ed25519 -N '' -C release@ningen -f {key}"
        )
        .run()
        .expect("ssh-keygen (openssh-client) is a prerequisite of the tests");
        sign(&sh, &key, &out).unwrap();
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let signers = f.dir.path().join("allowed_signers");
        std::fs::write(&signers, format!("release@ningen {public}")).unwrap();
        let sig = out.join("SHA256SUMS.sig");
        let sums = out.join("SHA256SUMS");
        let verify = |sh: &Shell| {
            cmd!(sh, "ssh-keygen -Y verify -f {signers} -I release@ningen -n {SIGNATURE_NAMESPACE} -s {sig}")
                .stdin(std::fs::read(&sums).unwrap())
                .quiet()
                .ignore_stderr()
                .read()
        };
        assert!(verify(&sh).is_ok(), "the signature verifies");
        std::fs::write(&sums, "0000  dazai-x86_64-unknown-linux-musl\n").unwrap();
        assert!(verify(&sh).is_err(), "a changed SHA256SUMS does not verify");
    }
}
