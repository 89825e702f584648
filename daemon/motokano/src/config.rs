//! The tools file: which MCP tools `dazai mcp` serves, read and checked in
//! full before the server starts.
//!
//! ```toml
//! [[tool]]
//! name = "deploy_status"
//! description = "Reads the deployment status with the API token"
//! kind = "exec"
//! program = "/usr/local/bin/deploy-status"
//! args = ["--env", "{env}"]
//! inject = { API_KEY = "secret:api" }
//! timeout_secs = 10
//! max_output_bytes = 65536
//!
//! [tool.params.env]
//! type = "string"
//! pattern = "production|staging"
//!
//! [[tool]]
//! name = "api_token"
//! description = "The API token itself"
//! kind = "static"
//! secret = "api"
//! ```
//!
//! Every mistake is one [`ConfigError`] naming the file, the line, the cause
//! and the fix; the first one found stops the server from starting.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

/// Time limit of an exec tool that sets none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;
/// Longest time limit an exec tool may set.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Output cap of an exec tool that sets none.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Largest output cap an exec tool may set.
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
/// Length limit of a string parameter that sets none.
pub const DEFAULT_MAX_LENGTH: usize = 256;
/// Variables an exec tool's program inherits from `dazai mcp` unless `pass_env` says otherwise.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR",
];
/// The prefix that names a daemon secret in `inject` and `stdin`.
pub const SECRET_PREFIX: &str = "secret:";

/// A valid tools file.
#[derive(Debug)]
pub struct ToolsFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The tools, in file order.
    pub tools: Vec<Tool>,
}

/// One MCP tool.
#[derive(Debug)]
pub struct Tool {
    /// The MCP tool name.
    pub name: String,
    /// The configured description (the served one adds the honest limits).
    pub description: String,
    /// What calling it does.
    pub kind: Kind,
    /// The line of its `[[tool]]` entry, for messages.
    pub line: usize,
}

/// What a tool does.
#[derive(Debug)]
pub enum Kind {
    /// Returns a daemon secret or a fixed value.
    Static(StaticTool),
    /// Runs a configured program.
    Exec(ExecTool),
}

/// What a static tool returns.
#[derive(Debug)]
pub enum StaticTool {
    /// The daemon secret of this name.
    Secret(String),
    /// This fixed text.
    Value(String),
}

/// A program an exec tool runs, never through a shell.
#[derive(Debug)]
pub struct ExecTool {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// Its arguments; agent text appears only where a declared parameter is named.
    pub args: Vec<ArgTemplate>,
    /// Environment variables set to a daemon secret: `(VAR, secret name)`.
    pub inject: Vec<(String, String)>,
    /// A daemon secret written to the program's stdin (then closed).
    pub stdin_secret: Option<String>,
    /// Environment variables set to fixed values.
    pub env: Vec<(String, String)>,
    /// Variables passed through from `dazai mcp`'s own environment.
    pub pass_env: Vec<String>,
    /// Wall-clock limit; the program's process group is killed at it.
    pub timeout: Duration,
    /// Most bytes of output (stdout and stderr together) kept; the program is
    /// stopped when it writes more.
    pub max_output_bytes: usize,
    /// Typed parameters the agent may fill, by name.
    pub params: BTreeMap<String, Param>,
}

impl ExecTool {
    /// Every secret the tool hands its program, by name, without repeats.
    pub fn secret_names(&self) -> BTreeSet<&str> {
        self.inject
            .iter()
            .map(|(_, secret)| secret.as_str())
            .chain(self.stdin_secret.as_deref())
            .collect()
    }
}

/// One argument: literal text with parameter slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgTemplate(pub Vec<Piece>);

/// A piece of an argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Literal text from the config.
    Text(String),
    /// The value of the named parameter.
    Param(String),
}

/// A typed parameter the agent may fill.
#[derive(Debug)]
pub struct Param {
    /// Shown to the agent in the input schema.
    pub description: Option<String>,
    /// Its type and limits.
    pub kind: ParamKind,
    /// Whether a call must give it.
    pub required: bool,
}

/// A parameter's type and limits.
#[derive(Debug)]
pub enum ParamKind {
    /// Text of at most `max_length` bytes matching `pattern` in full.
    String {
        /// Longest accepted value, in bytes.
        max_length: usize,
        /// The pattern as written in the file (shown in the input schema).
        pattern: String,
        /// The same pattern, anchored at both ends.
        regex: Regex,
    },
    /// A whole number within `min..=max`.
    Integer {
        /// Smallest accepted value.
        min: i64,
        /// Largest accepted value.
        max: i64,
    },
}

/// A mistake in the tools file: one line with file, line, cause and fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The tools file.
    pub path: PathBuf,
    /// The 1-based line of the mistake, when one can be named.
    pub line: Option<usize>,
    /// What is wrong.
    pub cause: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.path.display().to_string();
        if let Some(line) = self.line {
            text.push_str(&format!(":{line}"));
        }
        text.push_str(&format!(": {}; fix: {}", self.cause, self.fix));
        // One line whatever the file holds: a control character an error
        // quotes from it (a `\r` written in a TOML string) is shown escaped.
        for c in text.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// `$XDG_CONFIG_HOME/dazai/tools.toml`, else `$HOME/.config/dazai/tools.toml`.
pub fn default_tools_path() -> Option<PathBuf> {
    let set = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    set("XDG_CONFIG_HOME")
        .or_else(|| set("HOME").map(|home| home.join(".config")))
        .map(|config| config.join("dazai").join("tools.toml"))
}

/// Reads and checks the tools file at `path`.
pub fn load(path: &Path) -> Result<ToolsFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_owned(),
        line: None,
        cause: format!("cannot read the tools file ({e})"),
        fix: "pass --tools the path of a readable TOML file (its format: `dazai mcp serve --help`)"
            .into(),
    })?;
    parse(path, &text)
}

/// Checks the text of a tools file; `path` only names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<ToolsFile, ConfigError> {
    let checker = Checker { path, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let first_line = e.message().lines().next().unwrap_or("").trim().to_owned();
        checker.error(
            e.span().map(|s| s.start),
            format!("invalid tools file: {first_line}"),
            "write TOML with one [[tool]] table per tool and only the keys `dazai mcp serve --help` lists",
        )
    })?;
    if raw.tool.is_empty() {
        return Err(checker.error(
            None,
            "no [[tool]] table: the server would serve nothing".into(),
            "add at least one [[tool]] with name, description and kind",
        ));
    }
    let mut tools: Vec<Tool> = Vec::new();
    for raw_tool in raw.tool {
        let tool = checker.tool(raw_tool)?;
        if tools.iter().any(|t| t.name == tool.name) {
            return Err(checker.error_at_line(
                tool.line,
                format!("a second tool is named {:?}", tool.name),
                "give every tool its own name",
            ));
        }
        tools.push(tool);
    }
    Ok(ToolsFile {
        path: path.to_owned(),
        tools,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tool: Vec<Spanned<RawTool>>,
}

type Text = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: Option<Text>,
    description: Option<Text>,
    kind: Option<Text>,
    secret: Option<Text>,
    value: Option<Text>,
    program: Option<Text>,
    args: Option<Spanned<Vec<Text>>>,
    inject: Option<Spanned<BTreeMap<Text, Text>>>,
    stdin: Option<Text>,
    env: Option<Spanned<BTreeMap<Text, Text>>>,
    pass_env: Option<Spanned<Vec<Text>>>,
    timeout_secs: Option<Spanned<i64>>,
    max_output_bytes: Option<Spanned<i64>>,
    params: Option<Spanned<BTreeMap<Text, Spanned<RawParam>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    kind: Option<Text>,
    description: Option<Text>,
    max_length: Option<Spanned<i64>>,
    pattern: Option<Text>,
    min: Option<Spanned<i64>>,
    max: Option<Spanned<i64>>,
    required: Option<Spanned<bool>>,
}

/// The keys only one kind may use, for a precise message.
const EXEC_ONLY: &[&str] = &[
    "program",
    "args",
    "inject",
    "stdin",
    "env",
    "pass_env",
    "timeout_secs",
    "max_output_bytes",
    "params",
];
const STATIC_ONLY: &[&str] = &["secret", "value"];

struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&self, offset: Option<usize>, cause: String, fix: &str) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            line: offset.map(|o| self.line_of(o)),
            cause,
            fix: fix.to_owned(),
        }
    }

    fn error_at_line(&self, line: usize, cause: String, fix: &str) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            line: Some(line),
            cause,
            fix: fix.to_owned(),
        }
    }

    fn at<T>(&self, spanned: &Spanned<T>, cause: String, fix: &str) -> ConfigError {
        self.error(Some(spanned.span().start), cause, fix)
    }

    fn tool(&self, raw: Spanned<RawTool>) -> Result<Tool, ConfigError> {
        let line = self.line_of(raw.span().start);
        let raw = raw.into_inner();
        let missing = |key: &str, fix: &str| {
            self.error_at_line(
                line,
                format!("this [[tool]] has no `{key}`"),
                &format!("add {key} = {fix}"),
            )
        };
        let name = raw
            .name
            .as_ref()
            .ok_or_else(|| missing("name", "\"...\" (letters, digits, _ . -; up to 64)"))?;
        if !is_valid_tool_name(name.get_ref()) {
            return Err(self.at(
                name,
                format!(
                    "tool name {:?} is not 1-64 of A-Z a-z 0-9 _ . -",
                    name.get_ref()
                ),
                "rename the tool with letters, digits, _ . or - only",
            ));
        }
        let description = raw
            .description
            .as_ref()
            .ok_or_else(|| missing("description", "\"what the tool does, for the agent\""))?;
        if description.get_ref().trim().is_empty() {
            return Err(self.at(
                description,
                "the description is empty".into(),
                "say what the tool does: the agent reads it to decide when to call it",
            ));
        }
        let kind_text = raw
            .kind
            .as_ref()
            .ok_or_else(|| missing("kind", "\"static\" or \"exec\""))?;
        let kind = match kind_text.get_ref().as_str() {
            "static" => {
                self.no_keys_of_other_kind(&raw, EXEC_ONLY, "static", "exec")?;
                Kind::Static(self.static_tool(&raw, line)?)
            }
            "exec" => {
                self.no_keys_of_other_kind(&raw, STATIC_ONLY, "exec", "static")?;
                Kind::Exec(self.exec_tool(raw_exec(&raw), line)?)
            }
            other => {
                return Err(self.at(
                    kind_text,
                    format!("unknown kind {other:?}"),
                    "set kind = \"static\" (return a secret or fixed value) or kind = \"exec\" (run a program)",
                ))
            }
        };
        Ok(Tool {
            name: name.get_ref().clone(),
            description: description.get_ref().trim().to_owned(),
            kind,
            line,
        })
    }

    fn no_keys_of_other_kind(
        &self,
        raw: &RawTool,
        keys: &[&str],
        kind: &str,
        other: &str,
    ) -> Result<(), ConfigError> {
        for key in keys {
            if let Some(offset) = raw.offset_of(key) {
                return Err(self.error(
                    Some(offset),
                    format!("`{key}` is a key of kind = \"{other}\", but this tool is kind = \"{kind}\""),
                    &format!("remove {key}, or set kind = \"{other}\""),
                ));
            }
        }
        Ok(())
    }

    fn static_tool(&self, raw: &RawTool, line: usize) -> Result<StaticTool, ConfigError> {
        match (&raw.secret, &raw.value) {
            (Some(secret), None) => Ok(StaticTool::Secret(self.secret_name(secret, secret.get_ref())?)),
            (None, Some(value)) => Ok(StaticTool::Value(value.get_ref().clone())),
            (Some(_), Some(value)) => Err(self.at(
                value,
                "a static tool has both `secret` and `value`".into(),
                "keep secret = \"NAME\" (a daemon secret) or value = \"...\" (fixed text), not both",
            )),
            (None, None) => Err(self.error_at_line(
                line,
                "this static tool has no `secret` (and no `value`)".into(),
                "add secret = \"NAME\" naming a daemon secret, or value = \"...\" for fixed text",
            )),
        }
    }

    /// Checks a secret name (without prefix) and returns it.
    fn secret_name<T>(&self, at: &Spanned<T>, name: &str) -> Result<String, ConfigError> {
        if dazai_client::protocol::is_valid_name(name) {
            Ok(name.to_owned())
        } else {
            Err(self.at(
                at,
                format!("{name:?} is not a valid secret name (1-64 of A-Z a-z 0-9 _ . -)"),
                "use the NAME the daemon was started with (--secret NAME=SOURCE)",
            ))
        }
    }

    /// `"secret:NAME"` → NAME.
    fn secret_reference(&self, value: &Text, key: &str) -> Result<String, ConfigError> {
        match value.get_ref().strip_prefix(SECRET_PREFIX) {
            Some(name) => self.secret_name(value, name),
            None => Err(self.at(
                value,
                format!("{key} takes a secret reference, not {:?}", value.get_ref()),
                &format!("write {key} as \"secret:NAME\"; put fixed values in env = {{ VAR = \"value\" }}"),
            )),
        }
    }

    fn exec_tool(&self, raw: RawExec<'_>, line: usize) -> Result<ExecTool, ConfigError> {
        let program = self.program(raw.program, line)?;
        let params = self.params(raw.params)?;
        let args = self.args(raw.args, &params, line)?;
        // inject and env fill one environment: a variable may be in only one.
        let mut names = BTreeSet::new();
        let inject = self.variables(raw.inject, &mut names, |_, value| {
            self.secret_reference(value, "an inject value")
        })?;
        let stdin_secret = raw
            .stdin
            .map(|value| self.secret_reference(value, "stdin"))
            .transpose()?;
        let env = self.variables(raw.env, &mut names, |var, value| {
            self.fixed_value(var, value)
        })?;
        let pass_env = self.pass_env(raw.pass_env)?;
        let timeout_secs = self.bounded(
            raw.timeout_secs,
            DEFAULT_TIMEOUT_SECS as i64,
            1,
            MAX_TIMEOUT_SECS as i64,
            "timeout_secs",
        )?;
        let max_output_bytes = self.bounded(
            raw.max_output_bytes,
            DEFAULT_MAX_OUTPUT_BYTES as i64,
            1,
            MAX_OUTPUT_BYTES as i64,
            "max_output_bytes",
        )?;
        Ok(ExecTool {
            program,
            args,
            inject,
            stdin_secret,
            env,
            pass_env,
            timeout: Duration::from_secs(timeout_secs as u64),
            max_output_bytes: max_output_bytes as usize,
            params,
        })
    }

    fn program(&self, program: Option<&Text>, line: usize) -> Result<PathBuf, ConfigError> {
        let program = program.ok_or_else(|| {
            self.error_at_line(
                line,
                "this exec tool has no `program`".into(),
                "add program = \"/absolute/path/to/program\"",
            )
        })?;
        if program.get_ref().contains(SECRET_PREFIX) {
            return Err(self.argv_secret(program));
        }
        let path = PathBuf::from(program.get_ref());
        if !path.is_absolute() || program.get_ref().contains('\0') {
            return Err(self.at(
                program,
                format!("program {:?} is not an absolute path", program.get_ref()),
                "name the program by its absolute path (no PATH search, no shell)",
            ));
        }
        Ok(path)
    }

    /// The argument templates; every parameter slot names a declared
    /// parameter, and every declared parameter has a slot.
    fn args(
        &self,
        raw: Option<&Spanned<Vec<Text>>>,
        params: &BTreeMap<String, Param>,
        line: usize,
    ) -> Result<Vec<ArgTemplate>, ConfigError> {
        let mut used = BTreeSet::new();
        let mut args = Vec::new();
        for arg in raw.map(|a| a.get_ref().as_slice()).unwrap_or_default() {
            if arg.get_ref().contains(SECRET_PREFIX) {
                return Err(self.argv_secret(arg));
            }
            let template = self.arg_template(arg)?;
            for piece in &template.0 {
                if let Piece::Param(name) = piece {
                    if !params.contains_key(name) {
                        return Err(self.at(
                            arg,
                            format!(
                                "argument names {{{name}}}, but no parameter {name:?} is declared"
                            ),
                            &format!(
                                "declare it in [tool.params.{name}] with a type and a pattern"
                            ),
                        ));
                    }
                    used.insert(name.clone());
                }
            }
            args.push(template);
        }
        if let Some((name, _)) = params.iter().find(|(name, _)| !used.contains(*name)) {
            return Err(self.error_at_line(
                line,
                format!("parameter {name:?} is declared but no argument uses it"),
                &format!("use \"{{{name}}}\" in args, or remove [tool.params.{name}]"),
            ));
        }
        Ok(args)
    }

    /// A table of environment variables, each name checked and noted in
    /// `names`, each value taken by `value_of`.
    fn variables(
        &self,
        raw: Option<&Spanned<BTreeMap<Text, Text>>>,
        names: &mut BTreeSet<String>,
        value_of: impl Fn(&Text, &Text) -> Result<String, ConfigError>,
    ) -> Result<Vec<(String, String)>, ConfigError> {
        let mut variables = Vec::new();
        for (var, value) in raw.map(|m| m.get_ref().iter()).into_iter().flatten() {
            self.env_name(var, names)?;
            variables.push((var.get_ref().clone(), value_of(var, value)?));
        }
        Ok(variables)
    }

    fn fixed_value(&self, var: &Text, value: &Text) -> Result<String, ConfigError> {
        if value.get_ref().starts_with(SECRET_PREFIX) {
            return Err(self.at(
                value,
                format!("env value of {} names a secret", var.get_ref()),
                &format!(
                    "move it to inject = {{ {} = \"{}\" }}",
                    var.get_ref(),
                    value.get_ref()
                ),
            ));
        }
        if value.get_ref().contains('\0') {
            return Err(self.at(
                value,
                "an env value holds a NUL byte".into(),
                "remove the NUL",
            ));
        }
        Ok(value.get_ref().clone())
    }

    fn pass_env(&self, raw: Option<&Spanned<Vec<Text>>>) -> Result<Vec<String>, ConfigError> {
        let Some(list) = raw else {
            return Ok(DEFAULT_PASS_ENV.iter().map(|s| (*s).to_owned()).collect());
        };
        let mut seen = BTreeSet::new();
        for var in list.get_ref() {
            self.env_name(var, &mut seen)?;
        }
        Ok(list.get_ref().iter().map(|v| v.get_ref().clone()).collect())
    }

    fn argv_secret(&self, at: &Text) -> ConfigError {
        self.at(
            at,
            "a secret may not be put on a command line: argv is readable by every user through /proc/PID/cmdline".into(),
            "pass it with inject = { VAR = \"secret:NAME\" } (environment) or stdin = \"secret:NAME\"",
        )
    }

    fn bounded(
        &self,
        value: Option<&Spanned<i64>>,
        default: i64,
        min: i64,
        max: i64,
        key: &str,
    ) -> Result<i64, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if (min..=max).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(self.at(
                v,
                format!("{key} = {} is out of range", v.get_ref()),
                &format!("set {key} between {min} and {max}"),
            )),
        }
    }

    fn env_name(&self, var: &Text, seen: &mut BTreeSet<String>) -> Result<(), ConfigError> {
        let name = var.get_ref();
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(self.at(
                var,
                format!("{name:?} is not an environment variable name"),
                "use letters, digits and _ (not starting with a digit)",
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(self.at(
                var,
                format!("{name} is set twice (inject and env share one environment)"),
                "set each variable once",
            ));
        }
        Ok(())
    }

    /// An argument is a parameter slot when it is exactly `{name}`, or ends in
    /// `={name}` after its first `=` (`--unit={unit}`); anything else is
    /// literal text, braces included (so a `sh -c` script keeps its `${VAR}`).
    fn arg_template(&self, arg: &Text) -> Result<ArgTemplate, ConfigError> {
        let text = arg.get_ref();
        if text.contains('\0') {
            return Err(self.at(arg, "an argument holds a NUL byte".into(), "remove the NUL"));
        }
        let (head, slot) = match text.split_once('=') {
            Some((head, tail)) if is_slot(tail) => (format!("{head}="), tail),
            _ if is_slot(text) => (String::new(), text.as_str()),
            _ => return Ok(ArgTemplate(vec![Piece::Text(text.clone())])),
        };
        let name = &slot[1..slot.len() - 1];
        if !is_valid_param_name(name) {
            return Err(self.at(
                arg,
                format!("{slot:?} is not a parameter name"),
                "name parameters with 1-64 lowercase letters, digits and _ (starting with a letter)",
            ));
        }
        let mut pieces = Vec::new();
        if !head.is_empty() {
            pieces.push(Piece::Text(head));
        }
        pieces.push(Piece::Param(name.to_owned()));
        Ok(ArgTemplate(pieces))
    }

    fn params(
        &self,
        raw: Option<&Spanned<BTreeMap<Text, Spanned<RawParam>>>>,
    ) -> Result<BTreeMap<String, Param>, ConfigError> {
        let mut params = BTreeMap::new();
        for (name, raw) in raw.map(|m| m.get_ref().iter()).into_iter().flatten() {
            params.insert(name.get_ref().clone(), self.param(name, raw)?);
        }
        Ok(params)
    }

    /// `at` is the parameter's table, where its mistakes are reported.
    fn param(&self, name: &Text, at: &Spanned<RawParam>) -> Result<Param, ConfigError> {
        if !is_valid_param_name(name.get_ref()) {
            return Err(self.at(
                name,
                format!("{:?} is not a parameter name", name.get_ref()),
                "name parameters with 1-64 lowercase letters, digits and _ (starting with a letter)",
            ));
        }
        let raw = at.get_ref();
        let kind_text = raw.kind.as_ref().ok_or_else(|| {
            self.at(
                at,
                format!("parameter {:?} has no `type`", name.get_ref()),
                "add type = \"string\" (with a pattern) or type = \"integer\"",
            )
        })?;
        let kind = match kind_text.get_ref().as_str() {
            "string" => self.string_param(name, at)?,
            "integer" => self.integer_param(name, at)?,
            other => {
                return Err(self.at(
                    kind_text,
                    format!("unknown parameter type {other:?}"),
                    "use type = \"string\" or type = \"integer\"",
                ))
            }
        };
        Ok(Param {
            description: raw.description.as_ref().map(|d| d.get_ref().clone()),
            kind,
            required: raw.required.as_ref().is_none_or(|r| *r.get_ref()),
        })
    }

    fn string_param(&self, name: &Text, at: &Spanned<RawParam>) -> Result<ParamKind, ConfigError> {
        let raw = at.get_ref();
        if let Some(key) = [("min", raw.min.is_some()), ("max", raw.max.is_some())]
            .iter()
            .find_map(|(k, set)| set.then_some(*k))
        {
            return Err(self.at(
                at,
                format!(
                    "`{key}` applies to integers, but {:?} is a string",
                    name.get_ref()
                ),
                "use max_length and pattern for strings",
            ));
        }
        let pattern = raw.pattern.as_ref().ok_or_else(|| {
            self.at(
                at,
                format!("string parameter {:?} has no `pattern`", name.get_ref()),
                "add pattern = \"...\" (a regular expression the whole value must match), e.g. \"[a-z0-9-]+\"",
            )
        })?;
        let regex = Regex::new(&format!("^(?:{})$", pattern.get_ref())).map_err(|e| {
            let first = e.to_string();
            let reason = first.lines().last().unwrap_or("").trim().to_owned();
            self.at(
                pattern,
                format!("bad pattern {:?} ({reason})", pattern.get_ref()),
                "write a regular expression in the syntax of the Rust regex crate",
            )
        })?;
        let max_length = self.bounded(
            raw.max_length.as_ref(),
            DEFAULT_MAX_LENGTH as i64,
            1,
            64 * 1024,
            "max_length",
        )? as usize;
        Ok(ParamKind::String {
            max_length,
            pattern: pattern.get_ref().clone(),
            regex,
        })
    }

    fn integer_param(&self, name: &Text, at: &Spanned<RawParam>) -> Result<ParamKind, ConfigError> {
        let raw = at.get_ref();
        if raw.pattern.is_some() || raw.max_length.is_some() {
            return Err(self.at(
                at,
                format!(
                    "pattern and max_length apply to strings, but {:?} is an integer",
                    name.get_ref()
                ),
                "use min and max for integers",
            ));
        }
        let min = raw.min.as_ref().map_or(i64::MIN, |v| *v.get_ref());
        let max = raw.max.as_ref().map_or(i64::MAX, |v| *v.get_ref());
        if min > max {
            return Err(self.at(
                at,
                format!("min {min} is above max {max}"),
                "make min at most max",
            ));
        }
        Ok(ParamKind::Integer { min, max })
    }
}

/// The exec keys of a raw tool, borrowed.
struct RawExec<'a> {
    program: Option<&'a Text>,
    args: Option<&'a Spanned<Vec<Text>>>,
    inject: Option<&'a Spanned<BTreeMap<Text, Text>>>,
    stdin: Option<&'a Text>,
    env: Option<&'a Spanned<BTreeMap<Text, Text>>>,
    pass_env: Option<&'a Spanned<Vec<Text>>>,
    timeout_secs: Option<&'a Spanned<i64>>,
    max_output_bytes: Option<&'a Spanned<i64>>,
    params: Option<&'a Spanned<BTreeMap<Text, Spanned<RawParam>>>>,
}

fn raw_exec(raw: &RawTool) -> RawExec<'_> {
    RawExec {
        program: raw.program.as_ref(),
        args: raw.args.as_ref(),
        inject: raw.inject.as_ref(),
        stdin: raw.stdin.as_ref(),
        env: raw.env.as_ref(),
        pass_env: raw.pass_env.as_ref(),
        timeout_secs: raw.timeout_secs.as_ref(),
        max_output_bytes: raw.max_output_bytes.as_ref(),
        params: raw.params.as_ref(),
    }
}

impl RawTool {
    /// Where `key`'s value starts, if the key is set.
    fn offset_of(&self, key: &str) -> Option<usize> {
        let start = |span: std::ops::Range<usize>| Some(span.start);
        match key {
            "secret" => self.secret.as_ref().and_then(|v| start(v.span())),
            "value" => self.value.as_ref().and_then(|v| start(v.span())),
            "program" => self.program.as_ref().and_then(|v| start(v.span())),
            "args" => self.args.as_ref().and_then(|v| start(v.span())),
            "inject" => self.inject.as_ref().and_then(|v| start(v.span())),
            "stdin" => self.stdin.as_ref().and_then(|v| start(v.span())),
            "env" => self.env.as_ref().and_then(|v| start(v.span())),
            "pass_env" => self.pass_env.as_ref().and_then(|v| start(v.span())),
            "timeout_secs" => self.timeout_secs.as_ref().and_then(|v| start(v.span())),
            "max_output_bytes" => self.max_output_bytes.as_ref().and_then(|v| start(v.span())),
            "params" => self.params.as_ref().and_then(|v| start(v.span())),
            _ => None,
        }
    }
}

/// 1-64 of `A-Z a-z 0-9 _ . -`: within what MCP clients accept as a tool name.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether `text` is `{...}` with no other brace: the shape of a parameter slot.
fn is_slot(text: &str) -> bool {
    text.len() > 2
        && text.starts_with('{')
        && text.ends_with('}')
        && !text[1..text.len() - 1].contains(['{', '}', '$'])
}

/// 1-64 of `a-z 0-9 _`, starting with a letter.
fn is_valid_param_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<ToolsFile, String> {
        parse(Path::new("tools.toml"), text).map_err(|e| e.to_string())
    }

    const ISSUE_EXAMPLE: &str = r#"
[[tool]]
name = "deploy_status"
description = "Reads the deployment status with the API token"
kind = "exec"
program = "/usr/local/bin/deploy-status"   # reads $API_KEY from its environment
args = ["--env", "production"]
inject = { API_KEY = "secret:api" }
timeout_secs = 10
max_output_bytes = 65536

[[tool]]
name = "api_token"
description = "The API token itself"
kind = "static"
secret = "api"
"#;

    #[test]
    fn the_example_of_the_issue_is_valid() {
        let file = check(ISSUE_EXAMPLE).unwrap();
        assert_eq!(file.tools.len(), 2);
        let Kind::Exec(exec) = &file.tools[0].kind else {
            panic!("exec")
        };
        assert_eq!(exec.inject, [("API_KEY".to_owned(), "api".to_owned())]);
        assert_eq!(exec.timeout, Duration::from_secs(10));
        assert_eq!(exec.max_output_bytes, 65536);
        assert_eq!(file.tools[0].line, 2);
        assert!(matches!(&file.tools[1].kind, Kind::Static(StaticTool::Secret(s)) if s == "api"));
        assert_eq!(file.tools[1].line, 12);
    }

    #[test]
    fn params_fill_argument_slots() {
        let file = check(
            r#"
[[tool]]
name = "logs"
description = "Tail a service's logs"
kind = "exec"
program = "/usr/bin/journalctl"
args = ["--unit={unit}", "-n", "{lines}", "{literal}x", "${HOME}"]

[tool.params.unit]
type = "string"
pattern = "[a-z0-9-]+"
max_length = 32

[tool.params.lines]
type = "integer"
min = 1
max = 500
"#,
        )
        .unwrap();
        let Kind::Exec(exec) = &file.tools[0].kind else {
            panic!("exec")
        };
        assert_eq!(
            exec.args[0].0,
            [Piece::Text("--unit=".into()), Piece::Param("unit".into())]
        );
        assert_eq!(exec.args[2].0, [Piece::Param("lines".into())]);
        assert_eq!(exec.args[3].0, [Piece::Text("{literal}x".into())]);
        assert_eq!(exec.args[4].0, [Piece::Text("${HOME}".into())]);
        assert!(matches!(
            exec.params["lines"].kind,
            ParamKind::Integer { min: 1, max: 500 }
        ));
    }

    #[test]
    fn the_example_in_the_docs_is_valid() {
        let doc = include_str!("../../../docs/mcp.md");
        let start = doc.find("<!-- tools-example -->").expect("example");
        let block = &doc[start..doc.find("<!-- /tools-example -->").expect("end")];
        let toml = &block[block.find("```toml\n").unwrap() + 8..block.rfind("```").unwrap()];
        let file = check(toml).unwrap();
        let names: Vec<&str> = file.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["deploy_status", "db_check", "api_token"]);
    }

    /// Each mistake: (file text, the exact one-line error).
    const MISTAKES: &[(&str, &str)] = &[
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"shell\"\n",
            "tools.toml:4: unknown kind \"shell\"; fix: set kind = \"static\" (return a secret or fixed value) or kind = \"exec\" (run a program)",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"static\"\n",
            "tools.toml:1: this static tool has no `secret` (and no `value`); fix: add secret = \"NAME\" naming a daemon secret, or value = \"...\" for fixed text",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/echo\"\nargs = [\"{v}\"]\n[tool.params.v]\ntype = \"string\"\npattern = \"[a-z\"\n",
            "tools.toml:9: bad pattern \"[a-z\" (error: unclosed character class); fix: write a regular expression in the syntax of the Rust regex crate",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/curl\"\nargs = [\"-H\", \"secret:api\"]\n",
            "tools.toml:6: a secret may not be put on a command line: argv is readable by every user through /proc/PID/cmdline; fix: pass it with inject = { VAR = \"secret:NAME\" } (environment) or stdin = \"secret:NAME\"",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"curl\"\n",
            "tools.toml:5: program \"curl\" is not an absolute path; fix: name the program by its absolute path (no PATH search, no shell)",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/echo\"\nargs = [\"{who}\"]\n",
            "tools.toml:6: argument names {who}, but no parameter \"who\" is declared; fix: declare it in [tool.params.who] with a type and a pattern",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/echo\"\nargs = [\"{v}\"]\n[tool.params.v]\ntype = \"string\"\n",
            "tools.toml:7: string parameter \"v\" has no `pattern`; fix: add pattern = \"...\" (a regular expression the whole value must match), e.g. \"[a-z0-9-]+\"",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/env\"\ninject = { TOKEN = \"api\" }\n",
            "tools.toml:6: an inject value takes a secret reference, not \"api\"; fix: write an inject value as \"secret:NAME\"; put fixed values in env = { VAR = \"value\" }",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"static\"\nsecret = \"api\"\nprogram = \"/bin/sh\"\n",
            "tools.toml:6: `program` is a key of kind = \"exec\", but this tool is kind = \"static\"; fix: remove program, or set kind = \"exec\"",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"static\"\nsecret = \"api\"\ncolour = 1\n",
            "tools.toml:6: invalid tools file: unknown field `colour`, expected one of `name`, `description`, `kind`, `secret`, `value`, `program`, `args`, `inject`, `stdin`, `env`, `pass_env`, `timeout_secs`, `max_output_bytes`, `params`; fix: write TOML with one [[tool]] table per tool and only the keys `dazai mcp serve --help` lists",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"static\"\nsecret = \"a\"\n[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"static\"\nvalue = \"v\"\n",
            "tools.toml:6: a second tool is named \"x\"; fix: give every tool its own name",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/true\"\ntimeout_secs = 0\n",
            "tools.toml:6: timeout_secs = 0 is out of range; fix: set timeout_secs between 1 and 3600",
        ),
        (
            "",
            "tools.toml: no [[tool]] table: the server would serve nothing; fix: add at least one [[tool]] with name, description and kind",
        ),
        (
            "[[tool]\n",
            "tools.toml:1: invalid tools file: unclosed array table, expected `]`; fix: write TOML with one [[tool]] table per tool and only the keys `dazai mcp serve --help` lists",
        ),
        // Found by the tools_config fuzz target: a `\r` the file writes in a
        // string, quoted by the error, once split its line in two.
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/echo\"\nargs = [\"{t\\rget(}\"]\n",
            "tools.toml:6: \"{t\\rget(}\" is not a parameter name; fix: name parameters with 1-64 lowercase letters, digits and _ (starting with a letter)",
        ),
    ];

    #[test]
    fn every_mistake_is_one_line_with_file_line_cause_and_fix() {
        for (text, expected) in MISTAKES {
            let error = check(text).expect_err(text);
            assert_eq!(&error, expected, "for:\n{text}");
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
