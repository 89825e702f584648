//! `dazai-mcp`: the MCP layer, run by `dazai mcp` (see `dazai mcp --help`).

fn main() -> std::process::ExitCode {
    dazai::mcp_main()
}
