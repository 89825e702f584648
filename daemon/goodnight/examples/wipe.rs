//! Reads a secret from stdin into a `SecretBuffer` and wipes it.
//!
//! Built in release mode by `tests/wipe_is_not_optimized_away.rs`, which checks
//! that the optimized, stripped binary still calls `explicit_bzero`.
//!
//! ```text
//! printf 'hunter2' | cargo run --example wipe -p goodnight
//! ```

use std::io;
use std::os::fd::AsFd;
use std::process::ExitCode;

use goodnight::{LockPolicy, SecretBuffer, SecretError};

fn main() -> ExitCode {
    match hold_and_wipe() {
        Ok((held, backend)) => {
            eprintln!("held {held} bytes ({backend}), wiped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wipe: {error}");
            ExitCode::FAILURE
        }
    }
}

fn hold_and_wipe() -> Result<(usize, goodnight::Backend), SecretError> {
    let mut secret = SecretBuffer::new(4096, LockPolicy::Required)?;
    let held = secret.read_from(io::stdin().as_fd())?;
    secret.wipe();
    Ok((held, secret.backend()))
}
