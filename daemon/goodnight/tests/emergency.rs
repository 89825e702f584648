//! The last resort: `wipe_every_secret_buffer` reaches every live buffer of
//! this process, and a dropped buffer leaves the table.

use goodnight::{emergency, LockPolicy, MemoryBackend, SecretBuffer};

fn buffer_holding(bytes: &[u8], backend: MemoryBackend) -> SecretBuffer {
    let mut secret = SecretBuffer::with_backend(bytes.len(), LockPolicy::Required, backend)
        .expect("a locked buffer");
    let (read, mut write) = std::os::unix::net::UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut write, bytes).unwrap();
    drop(write);
    secret
        .read_from(std::os::fd::AsFd::as_fd(&read))
        .expect("read the canary");
    secret
}

/// One test: the table is the process's own, so counting it needs no other
/// test running beside.
#[test]
fn the_last_resort_wipes_every_live_buffer_in_place_and_forgets_dropped_ones() {
    let first = buffer_holding(b"canary-emergency-one", MemoryBackend::Locked);
    let second = buffer_holding(b"canary-emergency-two", MemoryBackend::Auto);
    assert_eq!(first.expose(), b"canary-emergency-one");

    assert_eq!(emergency::wipe_every_secret_buffer(), 2);
    for secret in [&first, &second] {
        assert!(
            secret.expose().iter().all(|&b| b == 0),
            "{} bytes not wiped",
            secret.len()
        );
    }

    drop(first);
    assert_eq!(
        emergency::wipe_every_secret_buffer(),
        1,
        "a dropped buffer stays enlisted"
    );
    drop(second);
    assert_eq!(emergency::wipe_every_secret_buffer(), 0);
}
