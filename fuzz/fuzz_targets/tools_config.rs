//! The `dazai mcp` tools-config parser (`motokano::config::parse`), on any
//! text, and what the server then derives from a file it accepted (the tool
//! descriptions and input schemas served by `tools/list`, and argv for a call
//! without arguments).
//!
//! Beyond "never panics": a refusal is one line (the server prints it as its
//! one-line start-up error); an accepted file has valid, unique tool names,
//! absolute programs, and argument slots that all name declared parameters.

#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use motokano::args::build_argv;
use motokano::config::{is_valid_tool_name, parse, Kind, Piece};
use motokano::server::describe;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = match parse(Path::new("tools.toml"), text) {
        Ok(file) => file,
        Err(error) => {
            let message = error.to_string();
            assert!(
                !message.contains(['\n', '\r']),
                "a config error spans more than one line: {message:?}"
            );
            return;
        }
    };
    assert!(!file.tools.is_empty(), "accepted a file without tools");
    let mut names = BTreeSet::new();
    for tool in &file.tools {
        assert!(is_valid_tool_name(&tool.name), "bad name {:?}", tool.name);
        assert!(names.insert(tool.name.as_str()), "{:?} twice", tool.name);
        let _ = describe(tool);
        if let Kind::Exec(exec) = &tool.kind {
            assert!(exec.program.is_absolute(), "relative {:?}", exec.program);
            for piece in exec.args.iter().flat_map(|template| &template.0) {
                if let Piece::Param(name) = piece {
                    assert!(
                        exec.params.contains_key(name),
                        "slot {{{name}}} names no declared parameter"
                    );
                }
            }
            let _ = build_argv(exec, None);
        }
    }
});
