//! The `dazai mcp` request parser: each line an agent writes on stdin, decoded
//! as rmcp's stdio transport decodes it (trailing `\r` and a UTF-8 BOM
//! dropped, then serde into `ClientJsonRpcMessage`), and a `tools/call` then
//! taken through motokano's own handling of agent input: the tool looked up
//! by name, a static tool's "no arguments" rule, and an exec tool's
//! arguments checked and placed into argv (`motokano::args::build_argv`).
//!
//! Beyond "never panics": an argv that `build_argv` accepts holds only
//! declared parameters whose values pass their type, length and pattern, and
//! no more arguments than the configured template.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use motokano::args::build_argv;
use motokano::config::{self, Kind, ParamKind, ToolsFile};
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, JsonRpcMessage};
use serde_json::{Map, Value};

/// One tool of each kind, with every parameter type, an optional slot and a
/// slot inside a larger argument.
const TOOLS: &str = r#"
[[tool]]
name = "logs"
description = "Recent log lines of one unit"
kind = "exec"
program = "/usr/bin/journalctl"
args = ["--unit={unit}", "-n", "{lines}", "--grep={grep}", "--since={since}"]
[tool.params.unit]
type = "string"
pattern = "[a-z0-9-]+"
max_length = 16
[tool.params.lines]
type = "integer"
min = 1
max = 500
[tool.params.grep]
type = "string"
pattern = "[a-z ]+"
required = false
[tool.params.since]
type = "string"
pattern = "[0-9]{4}-[0-9]{2}-[0-9]{2}"
max_length = 10
required = false

[[tool]]
name = "token"
description = "The API token"
kind = "static"
secret = "api"

[[tool]]
name = "motd"
description = "A fixed greeting"
kind = "static"
value = "hello"
"#;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn tools() -> &'static ToolsFile {
    static TOOLS_FILE: OnceLock<ToolsFile> = OnceLock::new();
    TOOLS_FILE.get_or_init(|| {
        config::parse(Path::new("fuzz-tools.toml"), TOOLS).expect("the fixed tools file is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.strip_prefix(UTF8_BOM).unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Ok(message) = serde_json::from_slice::<ClientJsonRpcMessage>(line) else {
            continue;
        };
        // The reply path serializes what it decoded (ids, errors): must not panic.
        let _ = serde_json::to_vec(&message);
        if let JsonRpcMessage::Request(request) = message {
            if let ClientRequest::CallToolRequest(call) = request.request {
                call_tool(&call.params.name, call.params.arguments.as_ref());
            }
        }
    }
});

/// What motokano does with a `tools/call` before anything runs.
fn call_tool(name: &str, arguments: Option<&Map<String, Value>>) {
    let Some(tool) = tools().tools.iter().find(|t| t.name == name) else {
        return;
    };
    let exec = match &tool.kind {
        Kind::Static(_) => return,
        Kind::Exec(exec) => exec,
    };
    let Ok(argv) = build_argv(exec, arguments) else {
        return;
    };
    assert_eq!(argv[0].as_bytes(), b"/usr/bin/journalctl");
    assert!(argv.len() <= 1 + exec.args.len(), "argv grew: {argv:?}");
    let empty = Map::new();
    for (key, value) in arguments.unwrap_or(&empty) {
        let param = exec
            .params
            .get(key)
            .unwrap_or_else(|| panic!("accepted an undeclared argument {key:?}"));
        match (&param.kind, value) {
            (_, Value::Null) => {}
            (
                ParamKind::String {
                    max_length, regex, ..
                },
                Value::String(text),
            ) => {
                assert!(text.len() <= *max_length, "{key}: {text:?} too long");
                assert!(regex.is_match(text), "{key}: {text:?} off its pattern");
                assert!(!text.contains('\0'), "{key}: NUL passed");
            }
            (ParamKind::Integer { min, max }, number) => {
                let number = number.as_i64().expect("accepted a non-integer");
                assert!(
                    (*min..=*max).contains(&number),
                    "{key}: {number} out of range"
                );
            }
            (kind, value) => panic!("accepted {value} for {key} of kind {kind:?}"),
        }
    }
}
