//! A wipe is a write the optimizer may not remove: `explicit_bzero` on
//! glibc and musl (docs/design.md, "Secret memory").
//!
//! Builds `examples/wipe.rs` with the release profile (LTO, stripped) and looks
//! at the binary: the call to `explicit_bzero` must still be there.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `<target>/release/examples/wipe`, built with the workspace's release profile
/// into the same target directory this test binary lives in.
fn release_wipe_example() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    run(Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "build",
            "--quiet",
            "--release",
            "--example",
            "wipe",
            "-p",
            "goodnight",
        ])
        .arg("--target-dir")
        .arg(&target_dir));
    target_dir.join("release/examples/wipe")
}

#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
#[test]
fn the_release_build_imports_explicit_bzero_and_calls_it() {
    let binary = release_wipe_example();

    let imports = run(Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(&binary));
    let relocations = run(Command::new("objdump").arg("-R").arg(&binary));
    let disassembly = run(Command::new("objdump").arg("-d").arg(&binary));

    assert!(
        imports.lines().any(|line| line
            .split_whitespace()
            .last()
            .is_some_and(|s| s.starts_with("explicit_bzero"))),
        "explicit_bzero is not imported:\n{imports}"
    );
    // A call goes either through the PLT (`<explicit_bzero@plt>`) or, with
    // -z now / LTO, indirectly through its GOT slot, shown as `# <slot address>`.
    let got_slots: Vec<String> = relocations
        .lines()
        .filter(|line| line.contains("explicit_bzero"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|slot| {
            format!(
                "# {:x}",
                u64::from_str_radix(slot, 16).expect("hex address")
            )
        })
        .collect();
    let calls = disassembly
        .lines()
        .filter(|line| line.contains("call") || line.contains("\tbl"))
        .filter(|line| {
            line.contains("<explicit_bzero@plt>")
                || got_slots
                    .iter()
                    .any(|slot| line.contains(&format!("{slot} ")) || line.ends_with(slot))
        })
        .count();
    assert!(
        calls > 0,
        "no call to explicit_bzero (GOT slots {got_slots:?})"
    );
}
