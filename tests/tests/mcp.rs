//! `dazai mcp` (docs/design.md, "The MCP layer"), driven by a scripted MCP client over stdio, in
//! both protocol eras, and observed from outside: the daemon, `/proc`, exit
//! statuses.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dazai_e2e::{eventually, is_alive, signal, wait_exit, Daemon, DaemonBuilder, McpClient};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// A secret whose base64 holds `+` and `/`, whose URL encodings differ from
/// each other, and that needs no JSON escaping.
const SECRET: &str = "hunter2>>>??/&+ x";

/// Prints the injected secret in every form the redactor must catch, each
/// computed by the program itself from its environment.
const ENCODINGS: &str = r#"
echo "environment: $1"
printf 'raw: %s\n' "$API_KEY"
printf 'base64: %s\n' "$(printf %s "$API_KEY" | base64 -w0)"
printf 'base64url: %s\n' "$(printf %s "$API_KEY" | basenc --base64url -w0)"
printf 'base64url-nopad: %s\n' "$(printf %s "$API_KEY" | basenc --base64url -w0 | tr -d =)"
printf 'hex: %s\n' "$(printf %s "$API_KEY" | od -An -v -tx1 | tr -d ' \n')"
printf 'HEX: %s\n' "$(printf %s "$API_KEY" | od -An -v -tx1 | tr -d ' \n' | tr a-f A-F)"
printf 'url: %s\n' "$(printf %s "$API_KEY" | perl -pe 's/([^A-Za-z0-9_.~-])/sprintf("%%%02X", ord($1))/ge')"
printf 'form: %s\n' "$(printf %s "$API_KEY" | perl -pe 's/([^A-Za-z0-9_.* -])/sprintf("%%%02X", ord($1))/ge; s/ /+/g')"
echo "status: healthy"
"#;

fn tools() -> String {
    format!(
        r#"
[[tool]]
name = "deploy_status"
description = "Reads the deployment status with the API token"
kind = "exec"
program = "/bin/sh"
args = ["-c", '''{ENCODINGS}''', "deploy-status", "{{environment}}"]
inject = {{ API_KEY = "secret:api" }}
timeout_secs = 10
max_output_bytes = 65536

[tool.params.environment]
type = "string"
description = "Which deployment"
pattern = "production|staging"
max_length = 16

[[tool]]
name = "api_token"
description = "The API token itself"
kind = "static"
secret = "api"
"#
    )
}

/// The exec call's redacted output: every form replaced, nothing else touched.
const REDACTED: &str = "environment: production
raw: [REDACTED:api]
base64: [REDACTED:api]
base64url: [REDACTED:api]
base64url-nopad: [REDACTED:api]
hex: [REDACTED:api]
HEX: [REDACTED:api]
url: [REDACTED:api]
form: [REDACTED:api]
status: healthy
";

fn text_of(reply: &Value, block: usize) -> &str {
    reply["result"]["content"][block]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text block {block} in {reply}"))
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(SECRET), "{what} holds the secret: {text}");
}

#[test]
fn the_initialize_era_serves_discovery_list_calls_refusals_and_invalid_params() {
    let daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .mcp_tools(&tools())
        .start();
    let mut mcp = McpClient::start(&daemon);

    let init = mcp.request(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "scripted-client", "version": "1"}}}),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    mcp.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let list = mcp.request(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    let static_call = mcp.request(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "api_token", "arguments": {}}}));
    let exec_call = mcp.request(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "deploy_status", "arguments": {"environment": "production"}}}));
    let refused = mcp.request(json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "deploy_status", "arguments": {"environment": "prod; id"}}}));
    let wrong_type = mcp.request(json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
        "params": {"name": "deploy_status", "arguments": {"environment": 7}}}));
    let unknown = mcp.request(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "rm_rf", "arguments": {}}}));

    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(2));
    assert_eq!(text_of(&static_call, 0), SECRET);
    assert_eq!(text_of(&exec_call, 0), REDACTED);
    assert_eq!(exec_call["result"]["isError"], false);
    assert_eq!(refused["result"]["isError"], true);
    assert_eq!(wrong_type["result"]["isError"], true);
    assert_eq!(unknown["error"]["code"], -32602);
    // The static call is the only place the secret may appear.
    let transcript = mcp.transcript();
    assert_eq!(transcript.matches(SECRET).count(), 1, "{transcript}");
    assert_no_secret("the log", &mcp.log());
    insta::assert_snapshot!("initialize_era", transcript);
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "scripted-client", "version": "1"}
    })
}

#[test]
fn the_stateless_era_serves_discovery_list_calls_refusals_and_invalid_params() {
    let daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .mcp_tools(&tools())
        .start();
    let mut mcp = McpClient::start(&daemon);

    let discover = mcp.request(json!({"jsonrpc": "2.0", "id": "discover-1",
        "method": "server/discover", "params": {"_meta": meta()}}));
    let list = mcp.request(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list",
        "params": {"_meta": meta()}}));
    let static_call = mcp.request(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"_meta": meta(), "name": "api_token", "arguments": {}}}));
    let exec_call = mcp.request(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"_meta": meta(), "name": "deploy_status", "arguments": {"environment": "production"}}}));
    let refused = mcp.request(json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"_meta": meta(), "name": "deploy_status", "arguments": {"environment": "../../etc"}}}));
    let unknown = mcp.request(json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"_meta": meta(), "name": "rm_rf", "arguments": {}}}));
    let no_meta = mcp.request(json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list",
        "params": {}}));

    let versions = discover["result"]["supportedVersions"].to_string();
    assert!(
        versions.contains("2026-07-28") && versions.contains("2025-11-25"),
        "{versions}"
    );
    assert_eq!(list["result"]["tools"].as_array().map(Vec::len), Some(2));
    assert_eq!(text_of(&static_call, 0), SECRET);
    assert_eq!(text_of(&exec_call, 0), REDACTED);
    assert_eq!(refused["result"]["isError"], true);
    assert_eq!(unknown["error"]["code"], -32602);
    assert_eq!(no_meta["error"]["code"], -32602);
    let transcript = mcp.transcript();
    assert_eq!(transcript.matches(SECRET).count(), 1, "{transcript}");
    assert_no_secret("the log", &mcp.log());
    insta::assert_snapshot!("stateless_era", transcript);
}

/// A job that outlives any test: the program and a child in its group, each
/// writing its pid to `$DIR`.
const LONG_JOB: &str = r#"
[[tool]]
name = "long_job"
description = "Runs for ten minutes"
kind = "exec"
program = "/bin/sh"
args = ["-c", 'echo $$ > "$DIR/leader.pid"; sleep 600 & echo $! > "$DIR/child.pid"; wait']
inject = { API_KEY = "secret:api" }
pass_env = ["PATH", "DIR"]
timeout_secs = 600
"#;

/// Initializes the session and starts a call of `tool` (request id 2),
/// without waiting for its answer.
fn start_call(mcp: &mut McpClient, tool: &str) {
    mcp.send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "scripted-client", "version": "1"}}}),
    );
    mcp.receive();
    mcp.send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": tool, "arguments": {}}}));
}

/// A daemon serving [`LONG_JOB`], and a session with the job running.
fn long_job_session() -> (Daemon, McpClient) {
    let daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .mcp_tools(LONG_JOB)
        .start();
    let mut mcp = McpClient::start(&daemon);
    start_call(&mut mcp, "long_job");
    (daemon, mcp)
}

#[test]
fn a_panic_during_an_exec_call_leaves_no_process_of_the_call_alive() {
    let (mut daemon, mut mcp) = long_job_session();
    let leader = daemon.read_pid_file("leader.pid");
    let child = daemon.read_pid_file("child.pid");
    let registered = daemon.status()["registered"].to_string();
    assert!(
        registered.contains(&mcp.session.to_string()) && registered.contains(&leader.to_string()),
        "the session and the program are registered before the panic: {registered}"
    );

    assert!(daemon.exchange(b"dazai/1 PANIC HARD\n").starts_with("OK"));

    assert_eq!(
        daemon.wait_exit().signal(),
        Some(9),
        "the daemon SIGKILLs itself"
    );
    assert_eq!(
        wait_exit(&mut mcp.child).code(),
        Some(3),
        "the agent's dazai mcp ends: its session is gone"
    );
    for (what, pid) in [
        ("the session", mcp.session),
        ("the program", leader),
        ("its child", child),
    ] {
        eventually(&format!("{what} (pid {pid}) to be killed"), || {
            !is_alive(pid)
        });
    }
    assert!(daemon.log().contains("PANIC"), "{}", daemon.log());
}

#[test]
fn when_the_daemon_ends_dazai_mcp_kills_its_programs_wipes_and_exits_at_once() {
    let (mut daemon, mut mcp) = long_job_session();
    let leader = daemon.read_pid_file("leader.pid");
    let child = daemon.read_pid_file("child.pid");

    // A clean shutdown kills nothing itself: dazai mcp must notice on its own.
    signal(daemon.pid, Signal::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    // The session exits by itself, noticed through its WATCH connection, and
    // the agent's relay with it (code 3: daemon gone); how fast is the bench's
    // business, not this test's.
    assert_eq!(
        wait_exit(&mut mcp.child).code(),
        Some(3),
        "log: {}",
        mcp.log()
    );
    for (what, pid) in [("the program", leader), ("its child", child)] {
        eventually(&format!("{what} (pid {pid}) to be killed"), || {
            !is_alive(pid)
        });
    }
    let log = mcp.log();
    assert!(log.contains("the daemon is gone"), "{log}");
    assert!(
        log.contains("wiped 1 secrets"),
        "the call's secret was wiped: {log}"
    );
}

/// systemd's stop sends SIGTERM to every process of the unit: the executor
/// removes its socket rather than leave it stale for the next start.
#[test]
fn sigterm_to_the_executor_removes_its_socket() {
    let mut daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .mcp_tools(LONG_JOB)
        .start();
    eventually("the executor to listen", || {
        daemon.log().contains("to agents on")
    });
    let executor_socket = daemon.socket.with_extension("mcp.sock");
    assert!(executor_socket.exists());
    let executor = daemon.status()["supervised"]["pid"].as_i64().unwrap() as i32;

    signal(executor, Signal::SIGTERM);

    assert_eq!(daemon.wait_exit().code(), Some(143), "{}", daemon.log());
    assert!(
        !executor_socket.exists(),
        "{} left behind",
        executor_socket.display()
    );
}

/// Prints the injected secret, says so in a file, and keeps running: the
/// session holds the secret in the output it collects, unredacted as yet.
const PRINTS_AND_WAITS: &str = r#"
[[tool]]
name = "prints_and_waits"
description = "Prints the token, then runs for ten minutes"
kind = "exec"
program = "/bin/sh"
args = ["-c", 'printf %s "$API_KEY"; touch "$DIR/printed"; exec sleep 600']
inject = { API_KEY = "secret:api" }
pass_env = ["PATH", "DIR"]
timeout_secs = 600
"#;

/// The end clears the call's redactor: the output collected so far must be
/// dropped unread, never redacted with the emptied redactor and shown.
#[test]
fn a_call_running_when_the_daemon_ends_answers_without_its_output() {
    let mut daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .mcp_tools(PRINTS_AND_WAITS)
        .start();
    let mut mcp = McpClient::start(&daemon);
    start_call(&mut mcp, "prints_and_waits");
    eventually("the program to print the secret", || {
        daemon.path("printed").exists()
    });

    signal(daemon.pid, Signal::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));

    let answer = mcp.receive();
    assert_eq!(answer["id"], 2, "{answer}");
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    let text = answer.to_string();
    assert!(!text.contains(SECRET), "the agent got the secret: {text}");
    assert!(text.contains("its output was wiped unread"), "{text}");
    assert_eq!(wait_exit(&mut mcp.child).code(), Some(3), "{}", mcp.log());
}

fn call_only_tool(mcp: &mut McpClient, arguments: Value) -> (Value, Duration) {
    mcp.request(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "scripted-client", "version": "1"}}}),
    );
    let started = Instant::now();
    let reply = mcp.request(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "job", "arguments": arguments}}));
    (reply, started.elapsed())
}

#[test]
fn the_output_cap_stops_the_program_and_cuts_the_output() {
    let daemon = DaemonBuilder::new()
        .mcp_tools(
            r#"
[[tool]]
name = "job"
description = "Floods its output"
kind = "exec"
program = "/bin/sh"
args = ["-c", 'echo $$ > "$DIR/leader.pid"; while :; do echo 0123456789abcdef; done']
pass_env = ["PATH", "DIR"]
max_output_bytes = 1000
timeout_secs = 120
"#,
        )
        .start();
    let mut mcp = McpClient::start(&daemon);
    let (reply, _) = call_only_tool(&mut mcp, json!({}));

    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert_eq!(text_of(&reply, 0).len(), 1000);
    assert_eq!(
        text_of(&reply, 1),
        "[dazai: stopped at the output cap of 1000 bytes; the program's process group was killed]"
    );
    let leader = daemon.read_pid_file("leader.pid");
    eventually("the flooding program to be killed", || !is_alive(leader));
}

#[test]
fn the_time_limit_kills_the_programs_whole_process_group() {
    let daemon = DaemonBuilder::new()
        .mcp_tools(r#"
[[tool]]
name = "job"
description = "Hangs"
kind = "exec"
program = "/bin/sh"
args = ["-c", 'echo $$ > "$DIR/leader.pid"; echo started; sleep 600 & echo $! > "$DIR/child.pid"; wait']
pass_env = ["PATH", "DIR"]
timeout_secs = 1
"#)
        .start();
    let mut mcp = McpClient::start(&daemon);
    let (reply, took) = call_only_tool(&mut mcp, json!({}));

    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert_eq!(text_of(&reply, 0), "started\n");
    assert_eq!(
        text_of(&reply, 1),
        "[dazai: stopped at the 1 s time limit; the program's process group was killed]"
    );
    // The limit is honoured, never cut short; the message says it fired.
    assert!(took >= Duration::from_secs(1), "stopped early: {took:?}");
    for name in ["leader.pid", "child.pid"] {
        let pid = daemon.read_pid_file(name);
        eventually(&format!("{name} ({pid}) to be killed"), || !is_alive(pid));
    }
}

#[test]
fn every_encoding_of_an_injected_secret_is_redacted_including_wrapped_base64() {
    // Longer than 57 bytes, so `base64` wraps it over two lines.
    let long = "correct-horse-battery-staple/with+symbols&and spaces=plenty?!";
    let daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .secret("long", long)
        .mcp_tools(&format!(
            r#"
[[tool]]
name = "job"
description = "Prints its secrets in many encodings"
kind = "exec"
program = "/bin/sh"
args = ["-c", '''{ENCODINGS}
printf %s "$LONG" | base64
printf %s "$LONG" | basenc --base64url
''', "job", "production"]
inject = {{ API_KEY = "secret:api", LONG = "secret:long" }}
"#
        ))
        .start();
    let mut mcp = McpClient::start(&daemon);
    let (reply, _) = call_only_tool(&mut mcp, json!({}));

    assert_eq!(reply["result"]["isError"], false, "{reply}");
    assert_eq!(
        text_of(&reply, 0),
        format!("{REDACTED}[REDACTED:long]\n[REDACTED:long]\n")
    );
}

#[test]
fn a_secret_injected_on_stdin_reaches_the_program_and_not_the_agent() {
    let daemon = DaemonBuilder::new().secret("api", SECRET)
        .mcp_tools(r#"
[[tool]]
name = "job"
description = "Reads the token on stdin"
kind = "exec"
program = "/bin/sh"
args = ["-c", 'IFS= read -r token; echo "read ${#token} bytes"; echo "$token"; tr -d "\n" < /proc/$$/environ | grep -c hunter2 || true']
stdin = "secret:api"
"#)
        .start();
    let mut mcp = McpClient::start(&daemon);
    let (reply, _) = call_only_tool(&mut mcp, json!({}));

    assert_eq!(
        text_of(&reply, 0),
        "read 17 bytes\n[REDACTED:api]\n0\n",
        "the secret is on stdin, not in the environment"
    );
}

#[test]
fn an_invalid_tools_file_refuses_to_start_with_one_line_naming_file_and_line() {
    let cases = [
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"shell\"\n",
            ":4: unknown kind \"shell\"; fix: set kind = \"static\"",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"static\"\n",
            ":1: this static tool has no `secret` (and no `value`); fix:",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/bin/echo\"\nargs = [\"{v}\"]\n[tool.params.v]\ntype = \"string\"\npattern = \"(\"\n",
            ":9: bad pattern \"(\"",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"exec\"\nprogram = \"/usr/bin/curl\"\nargs = [\"-u\", \"secret:api\"]\n",
            ":6: a secret may not be put on a command line",
        ),
        (
            "[[tool]]\nname = \"x\"\ndescription = \"d\"\nkind = \"static\"\nsecret = \"missing\"\n",
            ":1: tool \"x\" uses the secret \"missing\", which the daemon at",
        ),
    ];
    for (tools, expected) in cases {
        let mut daemon = DaemonBuilder::new()
            .secret("api", SECRET)
            .mcp_tools(tools)
            .start();
        // The executor refuses to start, and so the daemon's lifecycle ends.
        assert_eq!(daemon.wait_exit().code(), Some(9), "{tools}");
        let log = daemon.log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("dazai: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "one line: {log}");
        let tools_path = daemon.path("tools.toml").display().to_string();
        assert!(
            errors[0].starts_with(&format!("dazai: error: {tools_path}{expected}")),
            "{log}"
        );
    }
}

// The two daemon requests `dazai mcp` relies on.

#[test]
fn a_watch_connection_stays_silent_until_the_daemon_ends() {
    let mut daemon = DaemonBuilder::new().start();
    let mut watch = daemon.connect();
    watch.write_all(b"dazai/1 WATCH\n").unwrap();
    let mut reader = BufReader::new(watch.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK watching"), "{line}");
    // Still open well past the 3 s deadline of an ordinary control connection.
    watch
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = watch.read(&mut byte).expect_err("no data, no end of file");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");

    signal(daemon.pid, Signal::SIGTERM);
    daemon.wait_exit();
    watch
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        watch.read(&mut byte).unwrap(),
        0,
        "end of file at the daemon's end"
    );
}

#[test]
fn register_group_takes_only_a_group_leader_and_the_panic_kills_its_whole_group() {
    let mut daemon = DaemonBuilder::new().start();
    let mut leader = Command::new("/bin/sh")
        .args(["-c", "sleep 600 & echo $!; wait"])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(leader.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let member: i32 = line.trim().parse().unwrap();

    let refused = daemon.exchange(format!("dazai/1 REGISTER {member} GROUP\n").as_bytes());
    assert!(
        refused.contains("does not lead a process group"),
        "{refused}"
    );
    let ok = daemon.exchange(format!("dazai/1 REGISTER {} GROUP\n", leader.id()).as_bytes());
    assert_eq!(
        ok,
        format!("OK registered pid {} and its process group\n", leader.id())
    );

    assert!(daemon.exchange(b"dazai/1 PANIC HARD\n").starts_with("OK"));
    daemon.wait_exit();
    assert_eq!(wait_exit(&mut leader).signal(), Some(9));
    eventually("the group member to be killed", || !is_alive(member));
}

#[test]
fn ending_the_agents_dazai_mcp_kills_the_running_program_and_wipes() {
    let (daemon, mut mcp) = long_job_session();
    let leader = daemon.read_pid_file("leader.pid");
    let child = daemon.read_pid_file("child.pid");

    // The agent ends its `dazai mcp`: the session sees its input end.
    signal(mcp.pid(), Signal::SIGTERM);

    assert_eq!(wait_exit(&mut mcp.child).signal(), Some(15));
    for (what, pid) in [("the program", leader), ("its child", child)] {
        eventually(&format!("{what} (pid {pid}) to be killed"), || {
            !is_alive(pid)
        });
    }
    // The running call is cancelled (its group killed, its secrets wiped)
    // and the session ends; it says so after the kills, so its log may
    // still be on its way when they are seen.
    eventually("the session to log the cancelled call and its end", || {
        let log = mcp.log();
        log.contains("call long_job: pid")
            && log.contains("cancelled")
            && log.contains("stdin closed")
    });
}

#[test]
fn a_call_ends_when_its_program_exits_and_what_it_left_running_is_killed() {
    let daemon = DaemonBuilder::new()
        .mcp_tools(
            r#"
[[tool]]
name = "job"
description = "Leaves a job behind that holds its output open"
kind = "exec"
program = "/bin/sh"
args = ["-c", 'sleep 600 & echo $! > "$DIR/child.pid"; echo done']
pass_env = ["PATH", "DIR"]
timeout_secs = 120
"#,
        )
        .start();
    let mut mcp = McpClient::start(&daemon);
    let (reply, _) = call_only_tool(&mut mcp, json!({}));

    // Not an error: the call did not wait for the 120 s limit the job would hit.
    assert_eq!(reply["result"]["isError"], false, "{reply}");
    assert_eq!(text_of(&reply, 0), "done\n");
    let child = daemon.read_pid_file("child.pid");
    eventually("the job left behind to be killed", || !is_alive(child));
}

/// The fenced block between `<!-- NAME -->` and `<!-- /NAME -->` in docs/mcp.md.
fn docs_snippet(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/mcp.md"))
        .expect("docs/mcp.md");
    let start = doc
        .find(&format!("<!-- {name} -->"))
        .expect("snippet start");
    let end = doc.find(&format!("<!-- /{name} -->")).expect("snippet end");
    let block = &doc[start..end];
    let body = &block[block.find("```").unwrap()..];
    let body = &body[body.find('\n').unwrap() + 1..body.rfind("```").unwrap()];
    body.to_owned()
}

#[test]
fn the_client_configuration_in_the_docs_starts_a_working_server_as_written() {
    // The user's side: the tools file in its default place, the executor
    // under the daemon as the docs start it, dazai on PATH.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".config/dazai")).unwrap();
    std::fs::write(
        home.path().join(".config/dazai/tools.toml"),
        "[[tool]]\nname = \"api_token\"\ndescription = \"The API token\"\nkind = \"static\"\nsecret = \"api\"\n",
    )
    .unwrap();
    let bin = dazai_e2e::dazai_bin();
    let daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .env("HOME", &home.path().display().to_string())
        .env("XDG_CONFIG_HOME", "")
        .exec(&[&bin.display().to_string(), "mcp", "serve"])
        .start();
    let config: Value = serde_json::from_str(&docs_snippet("mcp-client-config")).unwrap();
    let server = &config["mcpServers"]["dazai"];
    let args: Vec<&str> = server["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let bin_dir = bin.parent().unwrap().to_owned();
    let mut command = Command::new(server["command"].as_str().unwrap());
    command
        .args(&args)
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
        .env("DAZAI_SOCKET", &daemon.socket);
    let mut mcp = McpClient::spawn(&daemon, command);

    let init = mcp.request(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "scripted-client", "version": "1"}}}),
    );
    let list = mcp.request(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));

    assert_eq!(
        init["result"]["serverInfo"]["name"],
        "dazai-mcp",
        "{}",
        mcp.log()
    );
    assert_eq!(list["result"]["tools"][0]["name"], "api_token");
}

#[test]
fn an_initialize_asking_for_the_stateless_revision_gets_the_newest_with_a_handshake() {
    let daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .mcp_tools(&tools())
        .start();
    let mut mcp = McpClient::start(&daemon);
    let init = mcp.request(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2026-07-28", "capabilities": {},
        "clientInfo": {"name": "scripted-client", "version": "1"}}}),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    let old = {
        let mut mcp = McpClient::start(&daemon);
        mcp.request(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2024-11-05", "capabilities": {},
            "clientInfo": {"name": "old-client", "version": "1"}}}),
        )
    };
    assert_eq!(old["result"]["protocolVersion"], "2024-11-05");
}

#[test]
fn sigterm_to_a_session_kills_its_program_wipes_and_ends_it() {
    let (daemon, mut mcp) = long_job_session();
    let leader = daemon.read_pid_file("leader.pid");

    signal(mcp.session, Signal::SIGTERM);

    eventually("the program to be killed", || !is_alive(leader));
    assert_eq!(wait_exit(&mut mcp.child).code(), Some(3), "{}", mcp.log());
    let log = mcp.log();
    assert!(
        log.contains("SIGTERM: killed 1 running program groups, wiped 1 secrets"),
        "{log}"
    );
}

#[test]
fn exec_calls_beyond_the_limit_are_refused_busy_and_run_nothing() {
    let tools_dir = tempfile::tempdir().unwrap();
    let tools = tools_dir.path().join("tools.toml");
    std::fs::write(&tools, LONG_JOB).unwrap();
    let bin = dazai_e2e::dazai_bin().display().to_string();
    let tools_arg = tools.display().to_string();
    let daemon = DaemonBuilder::new()
        .secret("api", SECRET)
        .exec(&[
            &bin,
            "mcp",
            "serve",
            "--tools",
            &tools_arg,
            "--max-calls",
            "1",
        ])
        .start();
    let mut mcp = McpClient::start(&daemon);
    start_call(&mut mcp, "long_job");
    let leader = daemon.read_pid_file("leader.pid");

    let busy = mcp.request(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "long_job", "arguments": {}}}));

    assert_eq!(busy["id"], 3, "{busy}");
    assert_eq!(busy["result"]["isError"], true, "{busy}");
    assert!(
        text_of(&busy, 0).starts_with("busy: 1 calls of exec tools already run"),
        "{busy}"
    );
    assert!(is_alive(leader), "the running call goes on");
    assert_eq!(
        std::fs::read_to_string(daemon.path("leader.pid"))
            .unwrap()
            .trim(),
        leader.to_string(),
        "no second program started"
    );
}
