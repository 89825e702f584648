//! The GitHub workflows are valid YAML of the promised shape: the gate is a
//! matrix of four cells (architecture × features), and no workflow holds
//! logic of its own: each step checks out the code or runs a script of ci/,
//! which exists, is executable and calls `cargo xtask`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the repository root")
}

fn workflow(name: &str) -> Yaml {
    let path = repo_root().join(".github/workflows").join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    assert_eq!(docs.len(), 1, "{name}: one document");
    docs.remove(0)
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .expect("a list")
        .iter()
        .map(|item| item.as_str().expect("a string").to_owned())
        .collect()
}

/// Every step of every job: `uses: actions/checkout@…` or `run: ci/<script> …`.
fn assert_steps_call_only_ci_scripts(name: &str, workflow: &Yaml) {
    let jobs = workflow["jobs"].as_hash().expect("jobs");
    assert!(!jobs.is_empty(), "{name}: no jobs");
    for (job, body) in jobs {
        let steps = body["steps"].as_vec().expect("steps");
        for step in steps {
            if let Some(action) = step["uses"].as_str() {
                assert!(
                    action.starts_with("actions/checkout@"),
                    "{name} {job:?}: the only action allowed is checkout, not {action}"
                );
                continue;
            }
            let run = step["run"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} {job:?}: a step neither runs nor checks out"));
            let script = run.split_whitespace().next().unwrap_or_default();
            assert!(
                script.starts_with("ci/") && !run.contains(['\n', ';', '&', '|']),
                "{name} {job:?}: `{run}` must be one call of a ci/ script"
            );
            let path = repo_root().join(script);
            let mode = fs::metadata(&path)
                .unwrap_or_else(|e| panic!("{name}: {script}: {e}"))
                .permissions()
                .mode();
            assert_ne!(mode & 0o111, 0, "{script} must be executable");
            let text = fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("cargo xtask") || script == "ci/bootstrap.sh",
                "{script} must hand its work to cargo xtask"
            );
        }
    }
}

#[test]
fn the_gate_is_a_four_cell_matrix_of_architecture_and_features() {
    let ci = workflow("ci.yml");
    let matrix = &ci["jobs"]["cell"]["strategy"]["matrix"];
    assert_eq!(strings(&matrix["arch"]), ["x86_64", "aarch64"]);
    assert_eq!(strings(&matrix["features"]), ["no-seccomp", "seccomp"]);
    assert!(matrix["include"].is_badvalue() && matrix["exclude"].is_badvalue());
    let steps = ci["jobs"]["cell"]["steps"].as_vec().unwrap();
    assert!(
        steps.iter().any(|step| step["run"].as_str()
            == Some("ci/cell.sh ${{ matrix.arch }} ${{ matrix.features }}")),
        "each cell runs ci/cell.sh with its coordinates"
    );
    let cell = fs::read_to_string(repo_root().join("ci/cell.sh")).unwrap();
    assert!(cell.contains(r#"cargo xtask ci --arch "$1" --features "$2""#));
    assert_steps_call_only_ci_scripts("ci.yml", &ci);
}

#[test]
fn a_release_is_made_by_xtask_dist_on_a_tag_reproduced_and_publishes_target_dist() {
    let release = workflow("release.yml");
    let tags = strings(&release["on"]["push"]["tags"]);
    assert!(!tags.is_empty(), "release.yml runs on tags");
    let runs: Vec<&str> = release["jobs"]["dist"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|step| step["run"].as_str())
        .collect();
    let at = |script: &str| runs.iter().position(|run| run.starts_with(script));
    let (dist, reproduce, publish) = (at("ci/dist.sh"), at("ci/reproduce.sh"), at("ci/publish.sh"));
    assert!(
        dist.is_some() && reproduce > dist && publish > reproduce,
        "dist, then the reproduction, then publish: {runs:?}"
    );
    let dist = fs::read_to_string(repo_root().join("ci/dist.sh")).unwrap();
    assert!(dist.contains("cargo xtask dist"));
    assert_steps_call_only_ci_scripts("release.yml", &release);
}
