//! `cargo xtask man`: the man pages and shell completions, generated from
//! `dazai`'s command line at build time. The shipped executable carries
//! neither generator: they took 110 KiB of it, for files that never change
//! between two runs of the same release.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Writes every page into `man/` and every completion script into
/// `completions/` of the target directory (`$CARGO_TARGET_DIR`, else `target`).
pub(crate) fn run() -> Result<()> {
    let dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let written = write_all(&dir)?;
    println!(
        "wrote {} man pages in {} (view one with `man {}`) and completions for bash, zsh and fish in {}",
        written.len() - COMPLETIONS.len(),
        dir.join("man").display(),
        dir.join("man/dazai.1").display(),
        dir.join("completions").display()
    );
    Ok(())
}

/// The completion scripts: their shell and file name, as each shell's
/// completion directory wants it.
const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "dazai"),
    (Shell::Zsh, "_dazai"),
    (Shell::Fish, "dazai.fish"),
];

/// Writes `dir/man/*.1` and `dir/completions/*`, returning the paths written.
pub(crate) fn write_all(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("create {}", man.display()))?;
    for (name, page) in pages() {
        let path = man.join(format!("{name}.1"));
        write(&path, &page)?;
        written.push(path);
    }
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("create {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let path = completions.join(file);
        write(&path, &completion(shell))?;
        written.push(path);
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
}

/// dazai(1), then dazai-SUBCOMMAND(1) for each visible subcommand and each
/// visible subcommand of those (dazai-mcp-serve(1)), by page name, in roff.
fn pages() -> Vec<(String, Vec<u8>)> {
    let dazai = dazai::command();
    let mut pages = vec![("dazai".to_owned(), render(dazai.clone()))];
    for (name, sub) in subcommand_pages(&dazai) {
        // dazai-run(1) and its usage line `dazai run …`, as git's pages do.
        let page = sub
            .name(format!("dazai-{name}"))
            .bin_name(format!("dazai {}", name.replace('-', " ")))
            .version(dazai.get_version().unwrap_or_default().to_owned());
        pages.push((format!("dazai-{name}"), render(page)));
    }
    pages
}

fn subcommand_pages(dazai: &clap::Command) -> Vec<(String, clap::Command)> {
    let visible = |command: &clap::Command| {
        command
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut pages = Vec::new();
    for sub in visible(dazai) {
        let name = sub.get_name().to_owned();
        let nested = visible(&sub);
        pages.push((name.clone(), sub));
        pages.extend(
            nested
                .into_iter()
                .map(|page| (format!("{name}-{}", page.get_name()), page)),
        );
    }
    pages
}

fn render(page: clap::Command) -> Vec<u8> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .expect("rendering into memory cannot fail");
    roff
}

fn completion(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut dazai::command(), "dazai", &mut script);
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(name: &str) -> String {
        let (_, roff) = pages()
            .into_iter()
            .find(|(page, _)| page == name)
            .unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8(roff).unwrap()
    }

    #[test]
    fn the_man_page_documents_every_subcommand() {
        let dazai = page("dazai");
        assert!(dazai.contains(".TH dazai"), "roff: {dazai}");
        insta::assert_snapshot!(dazai);
    }

    /// dazai(1) names a page per subcommand (dazai-mcp(1) names
    /// dazai-mcp-serve(1)), and each renders; dazai-run(1) carries its exit
    /// statuses, signals and environment; dazai-mcp-serve(1) the tools file.
    #[test]
    fn every_subcommand_has_its_own_man_page() {
        let names: Vec<String> = pages().into_iter().map(|(name, _)| name).collect();
        assert!(
            names.iter().any(|n| n == "dazai-run") && names.iter().any(|n| n == "dazai-stop"),
            "{names:?}"
        );
        for name in names.iter().filter(|name| *name != "dazai") {
            let parent = page(name.rsplit_once('-').map_or("dazai", |(parent, _)| parent));
            assert!(
                parent.contains(&format!("{}(1)", name.replace('-', "\\-"))),
                "the page above names {name}(1)"
            );
            assert!(page(name).contains(&format!(".TH {name} 1")), "{name}");
        }
        let run = page("dazai-run");
        for section in ["Exit status:", "Signals:", "Environment:", "128+N"] {
            assert!(run.contains(section), "dazai-run(1) lacks {section}");
        }
        assert!(page("dazai-mcp-serve").contains("Tools file (TOML)"));
    }

    #[test]
    fn shell_completions_are_generated_for_bash_zsh_and_fish() {
        for (shell, _) in COMPLETIONS {
            let script = String::from_utf8(completion(shell)).unwrap();
            for subcommand in ["daemon", "client", "status", "run", "mcp"] {
                assert!(script.contains(subcommand), "{shell}: {subcommand}");
            }
            insta::assert_snapshot!(format!("completions_{shell}"), script);
        }
    }

    #[test]
    fn every_page_and_script_is_written_where_its_tool_looks() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_all(dir.path()).unwrap();
        for file in ["man/dazai.1", "man/dazai-mcp-serve.1", "completions/_dazai"] {
            let path = dir.path().join(file);
            assert!(written.contains(&path), "{file} not in {written:?}");
            assert!(
                std::fs::metadata(&path).unwrap().len() > 0,
                "{file} is empty"
            );
        }
    }
}
