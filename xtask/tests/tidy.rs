//! Tidy: the repository keeps its own conventions.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[test]
fn ci_run_runs_exactly_the_readme_test_command() {
    let readme = read(&repo_root().join("README.md"));
    let readme_command = readme
        .lines()
        .find_map(|line| {
            let (command, comment) = line.split_once('#')?;
            comment
                .trim_start()
                .starts_with("the tests")
                .then(|| command.trim())
        })
        .expect("README.md has a set-up line `<command>  # the tests: ...`");

    let ci_run_path = repo_root().join(".ci/run");
    let ci_run = read(&ci_run_path);
    let last_line = ci_run.lines().rev().find(|line| !line.trim().is_empty());
    assert_eq!(
        last_line.map(str::trim),
        Some(readme_command),
        ".ci/run must end by running exactly the README's test command"
    );
    let mode = fs::metadata(&ci_run_path)
        .expect("stat .ci/run")
        .permissions()
        .mode();
    assert_ne!(mode & 0o111, 0, ".ci/run must be executable");
}

#[test]
fn every_unsafe_block_has_a_safety_comment_within_three_lines() {
    let mut offenders = Vec::new();
    for dir in ["daemon", "client", "tests", "lab"] {
        for file in rust_files(&repo_root().join(dir)) {
            let text = read(&file);
            let lines: Vec<&str> = text.lines().collect();
            for (at, line) in lines.iter().enumerate() {
                if line.contains("unsafe {") && !is_comment(line) && !has_safety_comment(&lines, at)
                {
                    offenders.push(format!("{}:{}", relative(&file).display(), at + 1));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "`unsafe {{` without a `// SAFETY:` comment in the 3 lines above:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn no_test_is_ignored() {
    // Split so that this file does not find itself.
    let attribute = concat!("#[", "ignore");
    let offenders: Vec<String> = rust_files(repo_root())
        .into_iter()
        .filter(|file| read(file).contains(attribute))
        .map(|file| relative(&file).display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "an ignored test proves nothing; make it pass or delete it:\n  {}",
        offenders.join("\n  ")
    );
}

/// True when a `// SAFETY:` line is among the 3 lines above `at`, or in a
/// comment block that reaches into them (a long SAFETY comment).
fn has_safety_comment(lines: &[&str], at: usize) -> bool {
    let mut start = at.saturating_sub(3);
    while start > 0 && is_comment(lines[start]) && is_comment(lines[start - 1]) {
        start -= 1;
    }
    lines[start..at]
        .iter()
        .any(|line| line.contains("// SAFETY:"))
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with("//")
}

/// Every `.rs` file under `dir`, skipping build output and hidden directories;
/// none when `dir` does not exist yet (lab/).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    files_ending(dir, &[".rs"])
}

/// Files below `dir` whose names end in one of `endings`, skipping build
/// output and hidden directories.
fn files_ending(dir: &Path, endings: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files.extend(files_ending(&path, endings));
            }
        } else if endings.iter().any(|ending| name.ends_with(ending)) {
            files.push(path);
        }
    }
    files
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the repository root")
}

fn relative(path: &Path) -> &Path {
    path.strip_prefix(repo_root()).unwrap_or(path)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

/// The project explains itself in its own docs: nothing cites a file outside
/// the repository (the brief the work started from is not part of it).
#[test]
fn nothing_cites_a_file_outside_the_repository() {
    let outside = ["SPEC.md", "SPEC §", "LAB.md", "STYLE.md", "../shared/"];
    let mut offenders = Vec::new();
    for dir in [
        "daemon",
        "client",
        "tests",
        "lab",
        "xtask",
        "docs",
        "ci",
        "fuzz/fuzz_targets",
    ] {
        for file in files_ending(&repo_root().join(dir), &[".rs", ".md"]) {
            let text = read(&file);
            for (number, line) in text.lines().enumerate() {
                if outside.iter().any(|word| line.contains(word)) && !line.contains("outside = [") {
                    offenders.push(format!("{}:{}", file.display(), number + 1));
                }
            }
        }
    }
    let readme = read(&repo_root().join("README.md"));
    if outside.iter().any(|word| readme.contains(word)) {
        offenders.push("README.md".into());
    }
    assert!(
        offenders.is_empty(),
        "cites a file outside the repository: {offenders:?}"
    );
}
