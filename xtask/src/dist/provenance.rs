//! `provenance.json`: an in-toto Statement v1 whose predicate is SLSA
//! Provenance v1, so standard verifiers (slsa-verifier, in-toto tooling) can
//! read what a release was built from. The subjects are the shipped binaries
//! by SHA-256, each annotated with the lab legs that verified exactly those
//! bytes; the build definition names the source commit (what `cargo xtask
//! reproduce` rebuilds from), the toolchain and its image; the run details
//! name the lab run and its report, images and guest tools as byproducts.

use serde_json::{json, Value};

use super::Origin;

/// in-toto's Statement, version 1.
pub(crate) const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// SLSA's Provenance predicate, version 1.
pub(crate) const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// How `cargo xtask dist` builds: the project has no web address of its own
/// to name it by, so a URN does (docs/release.md says what it means).
pub(crate) const BUILD_TYPE: &str = "urn:ningen-shikkaku:build-type:cargo-xtask-dist:v1";
const BUILDER_ID: &str = "urn:ningen-shikkaku:builder:cargo-xtask-dist";

/// One shipped binary.
pub(crate) struct Subject {
    pub name: String,
    pub sha256: String,
    pub target: String,
    pub size: usize,
    /// The lab legs that tested exactly these bytes, with their results.
    pub verified_by: Vec<Value>,
}

/// The statement for `subjects`, built from `origin` and verified by the lab
/// run `run_id`, whose report (`report`, hashing to `report_sha256`) ships
/// beside them.
pub(crate) fn statement(
    origin: &Origin,
    run_id: &str,
    subjects: &[Subject],
    report: &Value,
    report_sha256: &str,
) -> Value {
    let subject: Vec<Value> = subjects
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "digest": { "sha256": s.sha256 },
                "annotations": { "target": s.target, "size": s.size, "verified_by": s.verified_by },
            })
        })
        .collect();
    let toolchain: serde_json::Map<String, Value> = origin
        .toolchain
        .iter()
        .map(|(tool, version)| (tool.clone(), Value::from(version.clone())))
        .collect();
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "source": { "digest": { "gitCommit": origin.commit } },
                    "command": "cargo xtask dist",
                    "targets": subjects.iter().map(|s| s.target.as_str()).collect::<Vec<_>>(),
                    "features": ["seccomp"],
                },
                "internalParameters": {
                    "sourceDirty": origin.dirty,
                    "toolchain": toolchain,
                },
                "resolvedDependencies": resolved_dependencies(origin, report),
            },
            "runDetails": {
                "builder": { "id": BUILDER_ID },
                "metadata": { "invocationId": run_id },
                "byproducts": byproducts(report, report_sha256),
            },
        },
    })
}

/// The source commit, the image `cross` built in, and the lab's images by
/// Docker's image ID.
fn resolved_dependencies(origin: &Origin, report: &Value) -> Vec<Value> {
    let mut dependencies = vec![
        json!({ "name": "source", "digest": { "gitCommit": origin.commit } }),
        json!({ "name": "toolchain image", "uri": format!("docker-image:{}", origin.toolchain_image) }),
    ];
    for image in report["images"].as_array().into_iter().flatten() {
        let id = image["id"].as_str().unwrap_or_default();
        dependencies.push(json!({
            "name": image["image"],
            "digest": { "sha256": id.strip_prefix("sha256:").unwrap_or(id) },
        }));
    }
    dependencies
}

/// The lab's report and, leg by leg, the guest tools its evidence rests on.
fn byproducts(report: &Value, report_sha256: &str) -> Vec<Value> {
    let mut byproducts = vec![json!({
        "name": "lab-report.json",
        "digest": { "sha256": report_sha256 },
    })];
    for leg in report["legs"].as_array().into_iter().flatten() {
        for (tool, sha) in leg["tools_sha256"].as_object().into_iter().flatten() {
            byproducts.push(json!({
                "name": format!("{}/{tool}", leg["name"].as_str().unwrap_or_default()),
                "digest": { "sha256": sha },
            }));
        }
    }
    byproducts
}

/// The source commit a statement names (what a reproduction rebuilds).
pub(crate) fn source_commit(statement: &Value) -> Option<&str> {
    if statement["_type"] != STATEMENT_TYPE || statement["predicateType"] != PREDICATE_TYPE {
        return None;
    }
    statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()?
        .iter()
        .find(|dependency| dependency["name"] == "source")?["digest"]["gitCommit"]
        .as_str()
}
