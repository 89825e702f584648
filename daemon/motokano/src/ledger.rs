//! The ledger: every secret `dazai mcp` holds at a given moment and every
//! program it is running, so that the daemon's end can wipe and kill them all
//! at once, from the watch thread, whatever the server is doing. The output a
//! running call has collected lives in its own task, which only it may touch:
//! the end tells those calls to stop, and waits (bounded) for them to drop,
//! and so wipe, their buffers.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use goodnight::SecretBuffer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::redact::Redactor;

/// A parked secret not claimed in this time is wiped (its response was never written).
const SLOT_LIFETIME: Duration = Duration::from_secs(60);
/// What a parked secret's placeholder starts with.
pub const SLOT_PREFIX: &str = "dazai-secret-slot-";
/// Hex digits after the prefix (128 random bits).
pub const SLOT_DIGITS: usize = 32;

/// The secrets of one exec call: what it injects and the redactor built from them.
#[derive(Default)]
pub struct CallSecrets {
    /// `(name, value)` of every secret the call hands its program.
    pub secrets: Vec<(String, SecretBuffer)>,
    /// Every form of those secrets, for the output.
    pub redactor: Redactor,
    /// Set when the end wiped them: the redactor is empty from then on, so
    /// the call's output must be dropped unread, never redacted with it.
    pub wiped: bool,
}

impl CallSecrets {
    /// The value of the secret `name`; empty once the end has wiped them.
    pub fn value_of(&self, name: &str) -> &[u8] {
        self.secrets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.expose())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Held {
    /// Secrets waiting for their response line to be written, by placeholder.
    slots: HashMap<String, (Instant, SecretBuffer)>,
    /// Process groups of running exec programs.
    groups: BTreeSet<i32>,
    /// The secrets of running exec calls.
    calls: Vec<Weak<Mutex<CallSecrets>>>,
    /// Set once everything was wiped for good: nothing may be added after.
    closed: bool,
}

/// What [`Ledger::wipe_and_kill_everything`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Secret buffers wiped.
    pub wiped: usize,
    /// Process groups sent SIGKILL.
    pub killed: Vec<i32>,
}

/// Shared by the server, the stdout writer and the watch thread.
pub struct Ledger {
    held: Mutex<Held>,
    /// Turns `true` at the end: running calls stop and drop their output.
    ended: tokio::sync::watch::Sender<bool>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::default(),
            ended: tokio::sync::watch::channel(false).0,
        })
    }

    /// Completes once [`Ledger::wipe_and_kill_everything`] has run (at once
    /// if it already has).
    pub fn ended(&self) -> impl Future<Output = ()> + 'static {
        let mut ended = self.ended.subscribe();
        async move {
            // An error means the ledger is gone, which is an end too.
            let _ = ended.wait_for(|ended| *ended).await;
        }
    }

    /// How many calls still hold their secrets (and so their output).
    pub fn calls_running(&self) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|call| call.strong_count() > 0)
            .count()
    }

    /// Waits until no call holds its secrets any more (so each has dropped
    /// the output it collected, which wipes it), at most `within`; returns
    /// the calls still running then.
    pub fn wait_for_calls_to_end(&self, within: Duration) -> usize {
        let started = Instant::now();
        loop {
            let running = self.calls_running();
            if running == 0 || started.elapsed() >= within {
                return running;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // A panic elsewhere must not keep the wipe from running.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Parks `secret` until the response that carries it is written; returns
    /// the placeholder the response holds in its place.
    pub fn park(&self, secret: SecretBuffer) -> Option<String> {
        let placeholder = format!("{SLOT_PREFIX}{}", random_hex()?);
        let mut held = self.lock();
        if held.closed {
            return None;
        }
        let now = Instant::now();
        held.slots
            .retain(|_, (since, _)| now.duration_since(*since) < SLOT_LIFETIME);
        held.slots.insert(placeholder.clone(), (now, secret));
        Some(placeholder)
    }

    /// Takes the secret parked under `placeholder`, if any.
    pub fn claim(&self, placeholder: &str) -> Option<SecretBuffer> {
        self.lock()
            .slots
            .remove(placeholder)
            .map(|(_, secret)| secret)
    }

    /// Holds one exec call's secrets where the daemon's end can wipe them.
    pub fn hold_call(&self, secrets: CallSecrets) -> Option<Arc<Mutex<CallSecrets>>> {
        let call = Arc::new(Mutex::new(secrets));
        let mut held = self.lock();
        if held.closed {
            return None;
        }
        held.calls.retain(|weak| weak.strong_count() > 0);
        held.calls.push(Arc::downgrade(&call));
        Some(call)
    }

    /// Notes a running program's process group.
    pub fn track_group(&self, pgid: i32) {
        self.lock().groups.insert(pgid);
    }

    /// Forgets a process group once its leader is reaped.
    pub fn untrack_group(&self, pgid: i32) {
        self.lock().groups.remove(&pgid);
    }

    /// Kills every running program's process group and wipes every secret
    /// held, for good: the ledger is closed, so nothing is held after it.
    pub fn wipe_and_kill_everything(&self) -> Cleared {
        let mut held = self.lock();
        held.closed = true;
        let killed = held
            .groups
            .iter()
            .copied()
            .filter(|pgid| kill(Pid::from_raw(-pgid), Signal::SIGKILL).is_ok())
            .collect();
        let mut wiped = held.slots.len();
        held.slots.clear();
        // Kept (weakly): `wait_for_calls_to_end` watches them go.
        for call in held.calls.iter().filter_map(Weak::upgrade) {
            let mut call = call.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            wiped += call.secrets.len();
            call.secrets.clear();
            call.redactor = Redactor::new();
            call.wiped = true;
        }
        drop(held);
        self.ended.send_replace(true);
        Cleared { wiped, killed }
    }
}

/// 128 bits from the kernel's random source, as hex.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; SLOT_DIGITS / 2];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of a live
        // stack array; getrandom(2) writes at most that many bytes.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n < 0 {
            if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                continue;
            }
            return None;
        }
        filled += n as usize;
    }
    Some(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use goodnight::LockPolicy;

    fn secret() -> SecretBuffer {
        SecretBuffer::new(16, LockPolicy::InsecureAllowUnlocked).expect("buffer")
    }

    #[test]
    fn a_parked_secret_is_claimed_once_by_its_unguessable_placeholder() {
        let ledger = Ledger::new();
        let a = ledger.park(secret()).unwrap();
        let b = ledger.park(secret()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), SLOT_PREFIX.len() + SLOT_DIGITS);
        assert!(ledger.claim(&a).is_some());
        assert!(ledger.claim(&a).is_none());
        assert!(ledger
            .claim("dazai-secret-slot-00000000000000000000000000000000")
            .is_none());
    }

    #[test]
    fn the_end_wipes_everything_and_refuses_more() {
        let ledger = Ledger::new();
        ledger.park(secret()).unwrap();
        let call = ledger
            .hold_call(CallSecrets {
                secrets: vec![("api".into(), secret())],
                ..CallSecrets::default()
            })
            .unwrap();
        let cleared = ledger.wipe_and_kill_everything();
        assert_eq!(cleared.wiped, 2);
        assert!(call.lock().unwrap().secrets.is_empty());
        assert!(call.lock().unwrap().wiped);
        assert!(ledger.park(secret()).is_none());
        assert!(ledger.hold_call(CallSecrets::default()).is_none());
    }

    #[test]
    fn the_end_is_announced_and_waits_for_running_calls_to_let_go() {
        let ledger = Ledger::new();
        let call = ledger.hold_call(CallSecrets::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ended = ledger.ended();
        let announced = std::thread::spawn(move || runtime.block_on(ended));

        ledger.wipe_and_kill_everything();
        announced.join().expect("the end reached a call's task");
        // The end keeps watching the call it wiped until the call lets go.
        assert_eq!(ledger.calls_running(), 1);
        let (let_go, told) = std::sync::mpsc::channel::<()>();
        let running_call = std::thread::spawn(move || {
            let _ = told.recv();
            drop(call);
        });
        let_go.send(()).unwrap();
        // The bound only keeps a broken ledger from hanging the test.
        assert_eq!(ledger.wait_for_calls_to_end(Duration::from_secs(60)), 0);
        running_call.join().unwrap();
        // A call that looks after the end learns of it at once.
        let late = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        late.block_on(ledger.ended());
    }
}
