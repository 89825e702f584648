//! `read_from` retries `EINTR`: a signal arriving while the daemon waits for
//! the secret must not abort start-up. In its own test binary because it
//! installs a process-wide signal handler.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use goodnight::{LockPolicy, SecretBuffer};
use nix::errno::Errno;
use nix::sys::pthread::{pthread_kill, pthread_self, Pthread};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Deliveries per signal number. Each test uses its own signal, so the counts
/// stay right when `cargo test` runs both tests in one process.
static SEEN: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];

extern "C" fn count_signal(signal: nix::libc::c_int) {
    if let Some(seen) = usize::try_from(signal).ok().and_then(|n| SEEN.get(n)) {
        seen.fetch_add(1, Ordering::SeqCst);
    }
}

fn seen(signal: Signal) -> usize {
    SEEN[signal as usize].load(Ordering::SeqCst)
}

/// Blocks in `read` on an empty pipe while another thread sends `signal` to this one
/// (no `SA_RESTART`, so the kernel reports EINTR) and only then writes
/// `payload` and closes the pipe. Returns what `read_in_this_thread` got.
fn read_interrupted_by_a_signal<T>(
    signal: Signal,
    payload: &'static [u8],
    read_in_this_thread: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> T,
) -> T {
    let handler = SigAction::new(
        SigHandler::Handler(count_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only touches an atomic, which is async-signal-safe.
    unsafe { sigaction(signal, &handler) }.expect("install the signal handler");
    let (read, write) = nix::unistd::pipe().expect("pipe");
    // As a number: musl's pthread_t is a pointer, which is not Send.
    let reader = pthread_self() as usize;
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        pthread_kill(reader as Pthread, signal).expect("signal the reader");
        thread::sleep(Duration::from_millis(200));
        File::from(write).write_all(payload).expect("write payload");
    });
    let result = read_in_this_thread(read.as_fd());
    writer.join().expect("writer thread");
    result
}

#[test]
fn a_plain_read_on_the_same_setup_fails_with_eintr() {
    let result = read_interrupted_by_a_signal(Signal::SIGUSR1, b"late", |fd| {
        nix::unistd::read(fd, &mut [0u8; 16])
    });

    assert_eq!(result, Err(Errno::EINTR));
    assert_eq!(seen(Signal::SIGUSR1), 1);
}

#[test]
fn read_from_retries_after_a_signal_interrupts_it_and_gets_the_whole_secret() {
    let mut secret = SecretBuffer::new(64, LockPolicy::Required).expect("buffer");

    let held =
        read_interrupted_by_a_signal(Signal::SIGUSR2, b"late secret", |fd| secret.read_from(fd));

    assert_eq!(held, Ok(11));
    assert_eq!(secret.expose(), b"late secret");
    assert_eq!(seen(Signal::SIGUSR2), 1, "the read was interrupted");
}
