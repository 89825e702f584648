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

/// A reader who holds a claim of docs/threat-model.md finds its proof by
/// name: each lab scenario opens by quoting its row's "what is claimed" cell
/// word for word, so the two cannot drift apart.
#[test]
fn every_lab_scenario_opens_with_its_rows_claim_word_for_word() {
    let model = read(&repo_root().join("docs/threat-model.md"));
    let claims = claims_of(&model);
    assert!(
        claims.len() >= 10,
        "the claims table of docs/threat-model.md: {claims:?}"
    );
    let mut offenders = Vec::new();
    for file in rust_files(&repo_root().join("lab/src/scenarios")) {
        if file.ends_with("mod.rs") {
            continue;
        }
        let text = read(&file);
        let header: Vec<&str> = text
            .lines()
            .take_while(|line| line.starts_with("//!"))
            .map(|line| line.trim_start_matches("//!").trim())
            .collect();
        let header = header.join(" ");
        let quoted = header
            .strip_prefix("Row **")
            .and_then(|rest| rest.split_once("** — \""))
            .and_then(|(row, rest)| Some((row, rest.split_once("\" (its")?.0)));
        let matches = quoted.is_some_and(|(row, quote)| {
            claims
                .iter()
                .any(|(name, claim)| name == row && *claim == quote)
        });
        if !matches {
            offenders.push(format!(
                "{}: opens with {:?}",
                relative(&file).display(),
                quoted
            ));
        }
    }
    assert!(
        offenders.is_empty(),
        "each scenario must open with `Row **<row>** — \"<what is claimed>\" (its …` quoting docs/threat-model.md:\n  {}",
        offenders.join("\n  ")
    );
}

/// `(row, what is claimed)` of the table that opens with `| row | what is claimed |`.
fn claims_of(model: &str) -> Vec<(String, String)> {
    model
        .lines()
        .skip_while(|line| !line.starts_with("| row | what is claimed |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| {
            let mut cells = line.trim_matches('|').split(" | ").map(str::trim);
            Some((cells.next()?.to_owned(), cells.next()?.to_owned()))
        })
        .collect()
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

/// The project explains itself in its own docs: every Markdown file that
/// code or docs name is one of the repository's own (or a report the lab or
/// dist writes), and no line carries a section sign, the way sections of
/// a document outside it would be cited.
#[test]
fn nothing_cites_a_file_outside_the_repository() {
    let own: Vec<String> = files_ending(repo_root(), &[".md"])
        .iter()
        .map(|path| {
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // Written by `cargo xtask lab` and `cargo xtask dist`, not committed.
    let generated = ["report.md", "lab-report.md"];
    let mut files = vec![repo_root().join("README.md")];
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
        files.extend(files_ending(&repo_root().join(dir), &[".rs", ".md"]));
    }
    let mut offenders = Vec::new();
    for file in files {
        for (number, line) in read(&file).lines().enumerate() {
            let outside = markdown_names(line).into_iter().find(|name| {
                let file_name = name.rsplit('/').next().unwrap_or(name);
                !own.iter().any(|own| own == file_name) && !generated.contains(&file_name)
            });
            if outside.is_some() || line.contains('\u{a7}') {
                offenders.push(format!(
                    "{}:{}: {}",
                    relative(&file).display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "cites a file outside the repository: {offenders:?}"
    );
}

/// The `….md` file names and paths in `line`.
fn markdown_names(line: &str) -> Vec<&str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
        .filter(|word| word.len() > 3 && word.ends_with(".md"))
        .collect()
}
