//! `dazai`: the daemon, the heartbeat client and the control commands.

fn main() -> std::process::ExitCode {
    dazai::main()
}
