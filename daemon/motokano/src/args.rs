//! An exec tool's command line: the configured arguments, with agent text
//! only in the slots of declared, validated parameters.

use std::collections::BTreeMap;
use std::ffi::CString;

use serde_json::{Map, Value};

use crate::config::{ExecTool, ParamKind, Piece};

/// Builds argv (program first) from the call's arguments, or says which rule
/// the call broke. A slot of an optional parameter the call leaves out drops
/// its whole argument.
pub fn build_argv(
    tool: &ExecTool,
    arguments: Option<&Map<String, Value>>,
) -> Result<Vec<CString>, String> {
    let empty = Map::new();
    let arguments = arguments.unwrap_or(&empty);
    if let Some(unknown) = arguments.keys().find(|k| !tool.params.contains_key(*k)) {
        let known: Vec<&str> = tool.params.keys().map(String::as_str).collect();
        return Err(if known.is_empty() {
            format!("unknown argument {unknown:?}: this tool takes no arguments")
        } else {
            format!(
                "unknown argument {unknown:?}: this tool takes {}",
                known.join(", ")
            )
        });
    }
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    for (name, param) in &tool.params {
        match arguments.get(name) {
            None | Some(Value::Null) if param.required => {
                return Err(format!("missing argument {name:?}"))
            }
            None | Some(Value::Null) => {}
            Some(value) => {
                values.insert(name, checked(name, &param.kind, value)?);
            }
        }
    }
    let program = tool.program.to_string_lossy().into_owned();
    let mut argv = vec![CString::new(program).map_err(|_| "program path holds a NUL".to_owned())?];
    'args: for template in &tool.args {
        let mut arg = String::new();
        for piece in &template.0 {
            match piece {
                Piece::Text(text) => arg.push_str(text),
                Piece::Param(name) => match values.get(name.as_str()) {
                    Some(value) => arg.push_str(value),
                    None => continue 'args,
                },
            }
        }
        argv.push(CString::new(arg).map_err(|_| "an argument holds a NUL byte".to_owned())?);
    }
    Ok(argv)
}

/// The value of one parameter as argument text, if it passes its type and limits.
fn checked(name: &str, kind: &ParamKind, value: &Value) -> Result<String, String> {
    match kind {
        ParamKind::String {
            max_length,
            pattern,
            regex,
        } => {
            let Some(text) = value.as_str() else {
                return Err(format!("argument {name:?} must be a string"));
            };
            if text.len() > *max_length {
                return Err(format!(
                    "argument {name:?} is {} bytes long; at most {max_length} are allowed",
                    text.len()
                ));
            }
            if text.contains('\0') || !regex.is_match(text) {
                return Err(format!(
                    "argument {name:?} does not match the allowed pattern {pattern:?}"
                ));
            }
            Ok(text.to_owned())
        }
        ParamKind::Integer { min, max } => match value.as_i64() {
            Some(number) if (*min..=*max).contains(&number) => Ok(number.to_string()),
            Some(number) => Err(format!(
                "argument {name:?} is {number}; it must be between {min} and {max}"
            )),
            None => Err(format!("argument {name:?} must be a whole number")),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::{parse, Kind};

    fn tool() -> ExecTool {
        let file = parse(
            Path::new("t.toml"),
            r#"
[[tool]]
name = "logs"
description = "d"
kind = "exec"
program = "/usr/bin/journalctl"
args = ["--unit={unit}", "-n", "{lines}", "--grep={grep}"]
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
"#,
        )
        .unwrap();
        match file.tools.into_iter().next().unwrap().kind {
            Kind::Exec(exec) => exec,
            Kind::Static(_) => unreachable!(),
        }
    }

    fn argv(arguments: Value) -> Result<Vec<String>, String> {
        build_argv(&tool(), arguments.as_object())
            .map(|argv| argv.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn valid_arguments_fill_their_slots_and_only_those() {
        assert_eq!(
            argv(json!({"unit": "nginx", "lines": 20, "grep": "error rate"})).unwrap(),
            [
                "/usr/bin/journalctl",
                "--unit=nginx",
                "-n",
                "20",
                "--grep=error rate"
            ]
        );
        assert_eq!(
            argv(json!({"unit": "nginx", "lines": 20})).unwrap(),
            ["/usr/bin/journalctl", "--unit=nginx", "-n", "20"]
        );
    }

    #[test]
    fn each_broken_rule_is_refused_with_its_reason() {
        let cases = [
            (
                json!({"unit": "nginx; rm -rf /", "lines": 1}),
                "argument \"unit\" does not match the allowed pattern \"[a-z0-9-]+\"",
            ),
            (
                json!({"unit": "Nginx", "lines": 1}),
                "argument \"unit\" does not match the allowed pattern \"[a-z0-9-]+\"",
            ),
            (
                json!({"unit": "a".repeat(17), "lines": 1}),
                "argument \"unit\" is 17 bytes long; at most 16 are allowed",
            ),
            (
                json!({"unit": 5, "lines": 1}),
                "argument \"unit\" must be a string",
            ),
            (
                json!({"unit": "x", "lines": 501}),
                "argument \"lines\" is 501; it must be between 1 and 500",
            ),
            (
                json!({"unit": "x", "lines": "5"}),
                "argument \"lines\" must be a whole number",
            ),
            (json!({"lines": 5}), "missing argument \"unit\""),
            (
                json!({"unit": "x", "lines": 5, "shell": "sh"}),
                "unknown argument \"shell\": this tool takes grep, lines, unit",
            ),
        ];
        for (arguments, expected) in cases {
            assert_eq!(
                argv(arguments.clone()).unwrap_err(),
                expected,
                "{arguments}"
            );
        }
    }
}
