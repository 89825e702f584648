//! A secret read from a tty, a descriptor, a pipe or a file goes straight into
//! the locked pages (`read(2)` into the mapping), never through a `Vec` or a
//! `String` (docs/design.md, "Secret memory").

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use common::{pipe_holding, read_own_memory};
use goodnight::{LockPolicy, MemoryBackend, SecretBuffer, SecretError};

const CANARY: &[u8] = b"canary-5be1d0-not-a-real-secret";

/// The locked backend, whose pages `/proc/self/mem` can show; reading into
/// secret memory (which it cannot show) is tested in `secretmem.rs`.
fn buffer(capacity: usize) -> SecretBuffer {
    SecretBuffer::with_backend(capacity, LockPolicy::Required, MemoryBackend::Locked)
        .expect("buffer")
}

fn rest_of(pipe: OwnedFd) -> Vec<u8> {
    let mut rest = Vec::new();
    File::from(pipe).read_to_end(&mut rest).expect("drain pipe");
    rest
}

#[test]
fn read_from_a_pipe_holds_exactly_the_bytes_written_into_it() {
    let mut secret = buffer(64);

    let held = secret.read_from(pipe_holding(CANARY).as_fd());

    assert_eq!(held, Ok(CANARY.len()));
    assert_eq!(secret.expose(), CANARY);
    assert_eq!(
        &read_own_memory(secret.expose().as_ptr() as usize, CANARY.len()),
        CANARY,
        "the bytes live in the mapping itself"
    );
}

#[test]
fn read_from_a_source_exactly_as_long_as_the_capacity_succeeds() {
    let mut secret = buffer(CANARY.len());

    let held = secret.read_from(pipe_holding(CANARY).as_fd());

    assert_eq!(held, Ok(CANARY.len()));
    assert_eq!(secret.expose(), CANARY);
}

#[test]
fn read_from_a_source_longer_than_the_capacity_is_too_long_and_leaves_the_pages_zeroed() {
    let mut secret = buffer(CANARY.len() - 1);
    let start = secret.expose().as_ptr() as usize;

    let result = secret.read_from(pipe_holding(CANARY).as_fd());

    assert_eq!(
        result,
        Err(SecretError::TooLong {
            capacity: CANARY.len() - 1
        })
    );
    assert!(secret.is_empty());
    assert!(
        read_own_memory(start, secret.data_pages_len())
            .iter()
            .all(|&b| b == 0),
        "the rejected secret was wiped"
    );
}

#[test]
fn read_from_appends_to_what_the_buffer_already_holds() {
    let mut secret = buffer(64);
    secret
        .read_from(pipe_holding(b"first-").as_fd())
        .expect("first read");

    let held = secret.read_from(pipe_holding(b"second").as_fd());

    assert_eq!(held, Ok(12));
    assert_eq!(secret.expose(), b"first-second");
}

#[test]
fn read_line_from_stops_at_the_newline_and_leaves_the_rest_in_the_pipe() {
    let mut secret = buffer(64);
    let pipe = pipe_holding(b"hunter2\nthe rest\n");

    let held = secret.read_line_from(pipe.as_fd());

    assert_eq!(held, Ok(7));
    assert_eq!(secret.expose(), b"hunter2");
    assert_eq!(rest_of(pipe), b"the rest\n");
}

#[test]
fn read_line_from_accepts_a_line_exactly_as_long_as_the_capacity() {
    let mut secret = buffer(7);
    let pipe = pipe_holding(b"hunter2\nnext");

    let held = secret.read_line_from(pipe.as_fd());

    assert_eq!(held, Ok(7));
    assert_eq!(secret.expose(), b"hunter2");
    assert_eq!(rest_of(pipe), b"next");
}

#[test]
fn read_line_from_a_line_longer_than_the_capacity_is_too_long_and_wiped() {
    let mut secret = buffer(6);
    let start = secret.expose().as_ptr() as usize;

    let result = secret.read_line_from(pipe_holding(b"hunter2\n").as_fd());

    assert_eq!(result, Err(SecretError::TooLong { capacity: 6 }));
    assert!(secret.is_empty());
    assert_eq!(read_own_memory(start, 8), [0; 8]);
}

#[test]
fn read_line_from_ends_at_end_of_file_without_a_newline() {
    let mut secret = buffer(64);

    let held = secret.read_line_from(pipe_holding(b"no newline").as_fd());

    assert_eq!(held, Ok(10));
    assert_eq!(secret.expose(), b"no newline");
}

#[test]
fn read_from_a_write_only_descriptor_is_a_read_error_naming_the_errno() {
    let (_read, write) = common::pipe();
    let mut secret = buffer(64);

    let result = secret.read_from(write.as_fd());

    assert_eq!(
        result,
        Err(SecretError::Read {
            errno: nix::errno::Errno::EBADF
        })
    );
}

#[test]
fn trim_trailing_newline_drops_crlf_and_zeroes_the_dropped_bytes() {
    let mut secret = buffer(64);
    secret
        .read_from(pipe_holding(b"token\r\n").as_fd())
        .expect("fill");
    let start = secret.expose().as_ptr() as usize;

    secret.trim_trailing_newline();

    assert_eq!(secret.expose(), b"token");
    assert_eq!(read_own_memory(start, 7), b"token\0\0");
}

#[test]
fn trim_trailing_newline_drops_only_one_newline_and_keeps_a_lone_carriage_return() {
    let mut twice = buffer(64);
    twice
        .read_from(pipe_holding(b"token\n\n").as_fd())
        .expect("fill");
    let mut lone_cr = buffer(64);
    lone_cr
        .read_from(pipe_holding(b"token\r").as_fd())
        .expect("fill");

    twice.trim_trailing_newline();
    lone_cr.trim_trailing_newline();

    assert_eq!(twice.expose(), b"token\n");
    assert_eq!(lone_cr.expose(), b"token\r");
}

#[test]
fn a_zero_capacity_buffer_holds_the_empty_secret_and_rejects_any_byte() {
    let mut empty = buffer(0);
    let mut one_byte_too_many = buffer(0);

    assert_eq!(empty.read_from(pipe_holding(b"").as_fd()), Ok(0));
    assert_eq!(
        one_byte_too_many.read_from(pipe_holding(b"x").as_fd()),
        Err(SecretError::TooLong { capacity: 0 })
    );
    assert_eq!(empty.capacity(), 0);
    assert!(empty.data_pages_len() >= 1);
}
