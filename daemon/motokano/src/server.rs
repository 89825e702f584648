//! The MCP server: the configured tools behind rmcp's `ServerHandler`.
//!
//! rmcp speaks both protocol eras on the one stdio stream: the `initialize`
//! handshake (2025-11-25 and earlier) and the stateless 2026-07-28 revision
//! (`server/discover`, the protocol version and client capabilities in each
//! request's `_meta`). This module only answers `tools/list` and `tools/call`.

use std::ffi::CString;
use std::sync::{Arc, Mutex, MutexGuard};

use goodnight::SecretBuffer;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    Tool as McpTool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use crate::args::build_argv;
use crate::config::{ExecTool, Kind, ParamKind, StaticTool, Tool, ToolsFile};
use crate::exec::{self, End, Environment, Launch, Output, Running};
use crate::ledger::{CallSecrets, Ledger};
use crate::link::DaemonLink;
use crate::log;
use crate::redact::Redactor;

/// The server: shared, cheap to clone.
#[derive(Clone)]
pub struct Motokano {
    inner: Arc<Inner>,
}

struct Inner {
    tools: Vec<Tool>,
    listed: Vec<McpTool>,
    daemon: DaemonLink,
    ledger: Arc<Ledger>,
    /// Exec calls running at once: each forks a tree and buffers its output.
    calls: tokio::sync::Semaphore,
    max_calls: usize,
}

impl Motokano {
    /// A server for `file`'s tools, fetching secrets from `daemon`, running
    /// at most `max_calls` exec calls at once.
    pub fn new(file: ToolsFile, daemon: DaemonLink, ledger: Arc<Ledger>, max_calls: usize) -> Self {
        let listed = file.tools.iter().map(describe).collect();
        Self {
            inner: Arc::new(Inner {
                tools: file.tools,
                listed,
                daemon,
                ledger,
                calls: tokio::sync::Semaphore::new(max_calls),
                max_calls,
            }),
        }
    }
}

/// The tool as the agent sees it: the configured description plus the honest limits.
pub fn describe(tool: &Tool) -> McpTool {
    let (description, schema, read_only) = match &tool.kind {
        Kind::Static(StaticTool::Secret(name)) => (
            format!(
                "{}\n\nReturns the secret \"{name}\" itself. Its value enters the model's context \
                 (and the client's transcript), where the dead-man's switch cannot wipe it; \
                 prefer an exec tool that uses the secret without returning it.",
                tool.description
            ),
            no_arguments(),
            true,
        ),
        Kind::Static(StaticTool::Value(_)) => (tool.description.clone(), no_arguments(), true),
        Kind::Exec(exec) => (
            exec_description(&tool.description, exec),
            input_schema(exec),
            false,
        ),
    };
    let mut listed = McpTool::new(tool.name.clone(), description, Arc::new(schema));
    if read_only {
        let mut annotations = ToolAnnotations::new();
        annotations.read_only_hint = Some(true);
        listed.annotations = Some(annotations);
    }
    listed
}

fn exec_description(description: &str, exec: &ExecTool) -> String {
    let mut text = format!(
        "{description}\n\nRuns {} directly with its configured arguments (no shell in between). ",
        exec.program.display()
    );
    let secrets: Vec<&str> = exec.secret_names().into_iter().collect();
    if !secrets.is_empty() {
        text.push_str(&format!(
            "The program is given the secret{} {} without it reaching you; every form of it \
             (raw, base64, base64url, hex, URL-encoded) is redacted from the output. ",
            if secrets.len() == 1 { "" } else { "s" },
            secrets
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    text.push_str(&format!(
        "The output is OS-buffered and not held in locked memory. Time limit {} s; output cap {} bytes.",
        exec.timeout.as_secs(),
        exec.max_output_bytes
    ));
    text
}

fn no_arguments() -> JsonObject {
    object(json!({
        "type": "object",
        "properties": {},
        "additionalProperties": false
    }))
}

fn input_schema(exec: &ExecTool) -> JsonObject {
    let mut properties = Map::new();
    for (name, param) in &exec.params {
        let mut property = match &param.kind {
            ParamKind::String {
                max_length,
                pattern,
                ..
            } => json!({
                "type": "string",
                "maxLength": max_length,
                "pattern": format!("^(?:{pattern})$"),
            }),
            ParamKind::Integer { min, max } => json!({
                "type": "integer",
                "minimum": min,
                "maximum": max,
            }),
        };
        if let Some(description) = &param.description {
            property["description"] = Value::String(description.clone());
        }
        properties.insert(name.clone(), property);
    }
    let required: Vec<&String> = exec
        .params
        .iter()
        .filter(|(_, p)| p.required)
        .map(|(name, _)| name)
        .collect();
    object(json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    }))
}

fn object(value: Value) -> JsonObject {
    match value {
        Value::Object(map) => map,
        _ => JsonObject::new(),
    }
}

/// A tool execution error the agent reads (not a protocol error).
fn refusal(text: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text.into())]).into()
}

impl ServerHandler for Motokano {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("dazai-mcp", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Tools backed by a dead-man's switch (ningen-shikkaku): exec tools use secrets \
                 without showing them to you; static secret tools put the secret in your context.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.inner.listed.clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(tool) = self.inner.tools.iter().find(|t| t.name == request.name) else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown tool {:?}; tools/list names the tools of this server",
                    request.name
                ),
                None,
            ));
        };
        match &tool.kind {
            Kind::Static(kind) => Ok(self.call_static(tool, kind, request.arguments.as_ref())),
            Kind::Exec(exec) => {
                let Ok(_running) = self.inner.calls.try_acquire() else {
                    log::line(format_args!(
                        "call {}: refused: {} exec calls already run",
                        tool.name, self.inner.max_calls
                    ));
                    return Ok(refusal(format!(
                        "busy: {} calls of exec tools already run in this session, the most it runs at once; the program was not run; retry when one ends",
                        self.inner.max_calls
                    )));
                };
                Ok(self
                    .call_exec(tool, exec, request.arguments.as_ref(), context)
                    .await)
            }
        }
    }
}

impl Motokano {
    fn call_static(
        &self,
        tool: &Tool,
        kind: &StaticTool,
        arguments: Option<&JsonObject>,
    ) -> CallToolResponse {
        if arguments.is_some_and(|a| !a.is_empty()) {
            return refusal(format!("{} takes no arguments", tool.name));
        }
        let name = match kind {
            StaticTool::Value(value) => {
                log::line(format_args!("call {}: fixed value returned", tool.name));
                return CallToolResult::success(vec![ContentBlock::text(value.clone())]).into();
            }
            StaticTool::Secret(name) => name,
        };
        let secret = match self.fetch_secret(tool, name) {
            Ok(secret) => secret,
            Err(why) => return refusal(why),
        };
        if std::str::from_utf8(secret.expose()).is_err() {
            return refusal(format!(
                "the secret \"{name}\" is not UTF-8 text, so a static tool cannot return it; use an exec tool"
            ));
        }
        let bytes = secret.len();
        match self.inner.ledger.park(secret) {
            Some(placeholder) => {
                log::line(format_args!(
                    "call {}: secret {name} ({bytes} bytes) returned into the model's context",
                    tool.name
                ));
                CallToolResult::success(vec![ContentBlock::text(placeholder)]).into()
            }
            None => refusal("the server is shutting down"),
        }
    }

    async fn call_exec(
        &self,
        tool: &Tool,
        exec: &ExecTool,
        arguments: Option<&JsonObject>,
        context: RequestContext<RoleServer>,
    ) -> CallToolResponse {
        self.run_exec(tool, exec, arguments, context)
            .await
            .unwrap_or_else(refusal)
    }

    /// The steps of an exec call; an `Err` is the text of the refusal the agent reads.
    async fn run_exec(
        &self,
        tool: &Tool,
        exec: &ExecTool,
        arguments: Option<&JsonObject>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, String> {
        let argv = checked_argv(tool, exec, arguments)?;
        let held = self.hold_secrets(tool, exec)?;
        let launch = launch(exec, argv, &lock(&held))?;
        let mut running = self.start(tool, exec, launch)?;
        if let Some(name) = &exec.stdin_secret {
            feed_stdin(tool, &mut running, lock(&held).value_of(name));
        }
        // One byte past the cap tells that there was more.
        let output = running
            .finish(
                exec.max_output_bytes + 1,
                exec.timeout,
                context.ct.cancelled(),
            )
            .await;
        let (end, pid) = (output.end, output.pid);
        let Some(shown) = redacted(held, output, exec.max_output_bytes) else {
            log::line(format_args!(
                "call {}: pid {pid} ended with the daemon; its output was wiped unread",
                tool.name
            ));
            return Err("the daemon went away during the call; its output was wiped unread".into());
        };
        log::line(format_args!(
            "call {}: pid {pid} {}; {} bytes of output, {} redactions",
            tool.name,
            describe_end(end),
            shown.stdout.len() + shown.stderr.len(),
            shown.replaced
        ));
        Ok(exec_answer(exec, end, shown))
    }

    /// Fetches `name` from the daemon for `tool`'s call.
    fn fetch_secret(&self, tool: &Tool, name: &str) -> Result<SecretBuffer, String> {
        self.inner.daemon.fetch(name).map_err(|error| {
            log::line(format_args!(
                "call {}: secret {name} unavailable: {error}",
                tool.name
            ));
            format!("the secret \"{name}\" is unavailable: {error}")
        })
    }

    /// Fetches every secret the program gets and learns their forms for
    /// redaction, held in the ledger so that the end can wipe them mid-call.
    fn hold_secrets(
        &self,
        tool: &Tool,
        exec: &ExecTool,
    ) -> Result<Arc<Mutex<CallSecrets>>, String> {
        let mut held = CallSecrets::default();
        for name in exec.secret_names() {
            held.secrets
                .push((name.to_owned(), self.fetch_secret(tool, name)?));
        }
        for (name, secret) in &held.secrets {
            held.redactor.add_secret(name, secret.expose());
        }
        self.inner
            .ledger
            .hold_call(held)
            .ok_or_else(|| "the server is shutting down".into())
    }

    fn start(&self, tool: &Tool, exec: &ExecTool, launch: Launch) -> Result<Running, String> {
        let daemon = &self.inner.daemon;
        exec::spawn(launch, self.inner.ledger.clone(), |pid| {
            daemon.register_group(pid).map_err(|e| e.to_string())
        })
        .map_err(|error| {
            log::line(format_args!("call {}: not started: {error}", tool.name));
            format!("{} could not be started: {error}", exec.program.display())
        })
    }
}

fn lock(call: &Mutex<CallSecrets>) -> MutexGuard<'_, CallSecrets> {
    // A panic elsewhere must not keep a call from reading its secrets.
    call.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn checked_argv(
    tool: &Tool,
    exec: &ExecTool,
    arguments: Option<&JsonObject>,
) -> Result<Vec<CString>, String> {
    build_argv(exec, arguments).map_err(|why| {
        log::line(format_args!("call {}: refused: {why}", tool.name));
        format!("refused: {why}; the program was not run")
    })
}

/// The program's argv and environment: `pass_env` read from our own
/// environment now, the secrets from the call's.
fn launch(exec: &ExecTool, argv: Vec<CString>, held: &CallSecrets) -> Result<Launch, String> {
    let inherited: Vec<(String, String)> = exec
        .pass_env
        .iter()
        .filter_map(|var| std::env::var(var).ok().map(|value| (var.clone(), value)))
        .collect();
    let from_secrets: Vec<(&str, &[u8])> = exec
        .inject
        .iter()
        .map(|(var, secret)| (var.as_str(), held.value_of(secret)))
        .collect();
    let entries = environment_entries(&inherited, &exec.env, &from_secrets);
    let environment = Environment::new(&entries).map_err(|error| error.to_string())?;
    Ok(Launch {
        argv,
        environment,
        wants_stdin: exec.stdin_secret.is_some(),
    })
}

/// The program's environment entries: the inherited variables the tool does
/// not set itself, then its fixed values, then its secrets. What the tool
/// sets, fixed or secret, hides the inherited value of the same name. A
/// variable both fixed and secret is refused by the tools file; were one
/// given, both entries would stay, the fixed one first.
fn environment_entries<'a>(
    inherited: &'a [(String, String)],
    fixed: &'a [(String, String)],
    from_secrets: &[(&'a str, &'a [u8])],
) -> Vec<(&'a str, &'a [u8])> {
    let set_by_tool = |var: &str| {
        fixed.iter().any(|(v, _)| v == var) || from_secrets.iter().any(|(v, _)| *v == var)
    };
    inherited
        .iter()
        .filter(|(var, _)| !set_by_tool(var))
        .map(|(var, value)| (var.as_str(), value.as_bytes()))
        .chain(
            fixed
                .iter()
                .map(|(var, value)| (var.as_str(), value.as_bytes())),
        )
        .chain(from_secrets.iter().copied())
        .collect()
}

/// Writes the stdin secret; a failure is logged and the call goes on.
fn feed_stdin(tool: &Tool, running: &mut Running, secret: &[u8]) {
    if let Err(errno) = running.feed_stdin(secret) {
        log::line(format_args!(
            "call {}: stdin not written: {errno}",
            tool.name
        ));
    }
}

/// What the agent sees of `output`, or `None` when the end wiped the call's
/// secrets first. Takes the call and its output so that the raw output is
/// dropped, and so wiped, before the call lets go of its secrets: the end
/// waits for that.
fn redacted(held: Arc<Mutex<CallSecrets>>, output: Output, max: usize) -> Option<Shown> {
    let stopped = !matches!(output.end, End::Exited(_));
    let shown = {
        // Checked under the call's lock, which the end takes to wipe it:
        // either the redactor is whole here, or the output goes unread.
        let held = lock(&held);
        (!held.wiped).then(|| {
            what_the_agent_sees(
                &held.redactor,
                output.stdout.as_slice(),
                output.stderr.as_slice(),
                max,
                stopped,
            )
        })
    };
    drop(output.stdout);
    drop(output.stderr);
    drop(held);
    shown
}

/// The redacted output, then a line that says why it is not all of it or
/// how the program failed.
fn exec_answer(exec: &ExecTool, end: End, shown: Shown) -> CallToolResponse {
    let mut content = vec![ContentBlock::text(shown.stdout)];
    if !shown.stderr.is_empty() {
        content.push(ContentBlock::text(format!("stderr:\n{}", shown.stderr)));
    }
    if let Some(note) = end_note(exec, end, shown.truncated) {
        content.push(ContentBlock::text(note));
    }
    if matches!(end, End::Exited(0)) {
        CallToolResult::success(content).into()
    } else {
        CallToolResult::error(content).into()
    }
}

/// `None` for a whole output of a program that exited with status 0.
fn end_note(exec: &ExecTool, end: End, truncated: bool) -> Option<String> {
    match end {
        End::Exited(0) if !truncated => None,
        End::Exited(0) => Some(format!(
            "[dazai: output cut at {} bytes]",
            exec.max_output_bytes
        )),
        End::Exited(code) => Some(format!("[dazai: the program exited with status {code}]")),
        End::Signaled(signal) => Some(format!("[dazai: the program was killed by signal {signal}]")),
        End::TimedOut => Some(format!(
            "[dazai: stopped at the {} s time limit; the program's process group was killed]",
            exec.timeout.as_secs()
        )),
        End::CapReached => Some(format!(
            "[dazai: stopped at the output cap of {} bytes; the program's process group was killed]",
            exec.max_output_bytes
        )),
        End::Cancelled => Some("[dazai: cancelled; the program's process group was killed]".into()),
    }
}

/// What the agent is shown of a run's output.
#[derive(Debug)]
pub struct Shown {
    /// Redacted stdout.
    pub stdout: String,
    /// Redacted stderr.
    pub stderr: String,
    /// Whether the cap cut anything.
    pub truncated: bool,
    /// How many forms of secrets were replaced.
    pub replaced: usize,
}

/// Cuts the raw output at `max` bytes, stdout first, *then* redacts: a
/// marker is shorter than a long secret, so cutting redacted text would let
/// raw bytes of a secret through. A piece that was cut, or whose program was
/// stopped mid-write (`stopped`: the time limit, a cancel, the cap), has a
/// trailing beginning of a form redacted as well.
pub fn what_the_agent_sees(
    redactor: &Redactor,
    stdout: &[u8],
    stderr: &[u8],
    max: usize,
    stopped: bool,
) -> Shown {
    let kept_out = &stdout[..stdout.len().min(max)];
    let kept_err = &stderr[..stderr.len().min(max - kept_out.len())];
    let shown = |raw: &[u8], kept: &[u8]| {
        if stopped || kept.len() < raw.len() {
            redactor.redact_cut(kept)
        } else {
            redactor.redact(kept)
        }
    };
    let (out, err) = (shown(stdout, kept_out), shown(stderr, kept_err));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Shown {
        stdout: text(&out.text),
        stderr: text(&err.text),
        truncated: kept_out.len() < stdout.len() || kept_err.len() < stderr.len(),
        replaced: out.replaced + err.replaced,
    }
}

fn describe_end(end: End) -> String {
    match end {
        End::Exited(code) => format!("exited with status {code}"),
        End::Signaled(signal) => format!("killed by signal {signal}"),
        End::TimedOut => "stopped at its time limit".into(),
        End::CapReached => "stopped at its output cap".into(),
        End::Cancelled => "cancelled".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Vars<'a> = &'a [(&'a str, &'a str)];

    fn text(vars: Vars) -> Vec<(String, String)> {
        vars.iter()
            .map(|(var, value)| (var.to_string(), value.to_string()))
            .collect()
    }

    /// The entries for variables given as text, as text.
    fn environment(inherited: Vars, fixed: Vars, from_secrets: Vars) -> Vec<(String, String)> {
        let (inherited, fixed) = (text(inherited), text(fixed));
        let from_secrets: Vec<(&str, &[u8])> = from_secrets
            .iter()
            .map(|(var, value)| (*var, value.as_bytes()))
            .collect();
        environment_entries(&inherited, &fixed, &from_secrets)
            .into_iter()
            .map(|(var, value)| (var.to_owned(), String::from_utf8_lossy(value).into_owned()))
            .collect()
    }

    #[test]
    fn a_fixed_value_hides_the_inherited_one() {
        assert_eq!(
            environment(
                &[("LANG", "C"), ("HOME", "/home/u")],
                &[("LANG", "en_US.UTF-8")],
                &[]
            ),
            text(&[("HOME", "/home/u"), ("LANG", "en_US.UTF-8")])
        );
    }

    #[test]
    fn a_secret_hides_the_inherited_value() {
        assert_eq!(
            environment(
                &[("TOKEN", "from-the-session"), ("PATH", "/bin")],
                &[],
                &[("TOKEN", "from-the-daemon")]
            ),
            text(&[("PATH", "/bin"), ("TOKEN", "from-the-daemon")])
        );
    }

    #[test]
    fn a_fixed_and_a_secret_value_of_one_variable_both_stay_fixed_first() {
        // The tools file refuses this; the builder neither merges nor drops.
        assert_eq!(
            environment(
                &[("TOKEN", "from-the-session")],
                &[("TOKEN", "fixed")],
                &[("TOKEN", "from-the-daemon")]
            ),
            text(&[("TOKEN", "fixed"), ("TOKEN", "from-the-daemon")])
        );
    }

    #[test]
    fn unrelated_variables_keep_inherited_then_fixed_then_secret_order() {
        assert_eq!(
            environment(&[("PATH", "/bin")], &[("MODE", "dry")], &[("TOKEN", "s")]),
            text(&[("PATH", "/bin"), ("MODE", "dry"), ("TOKEN", "s")])
        );
    }
}
