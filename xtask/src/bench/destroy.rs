//! Destroy latency: from SIGKILL to the heartbeat client (its socket closes as
//! it dies) to (a) every registered process dead and (b) the daemon dead, each
//! seen by the bench through its pidfd; once more with no process registered
//! and the daemon's stderr a full pipe nobody reads (its log lines cannot be
//! written: the panic must not wait for them). Start-up time comes free with
//! every run: from just before the daemon's exec to its ready line.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::dazai::{Dazai, Scratch, Stderr, PATIENCE};
use super::process::{DeathWatch, Watched};
use super::stats::Summary;

/// How many processes are registered in each configuration, and where the
/// daemon's stderr goes.
pub(crate) const CONFIGURATIONS: [(usize, Stderr); 5] = [
    (0, Stderr::Log),
    (1, Stderr::Log),
    (10, Stderr::Log),
    (100, Stderr::Log),
    (0, Stderr::Full),
];

/// Left between the attach and the kill, so that the daemon and the client
/// are back asleep in `poll` when the session dies, as they would be.
const SETTLE: Duration = Duration::from_millis(5);

/// One run's observations, from the SIGKILL of the client.
struct Sample {
    client_gone: Duration,
    daemon_gone: Duration,
    /// From the client's death seen to the daemon's: nearer to the instant
    /// the socket closed (late in the client's exit), but zero whenever one
    /// wake-up of the bench saw both.
    daemon_after_client: Duration,
    /// The last registered process seen dead (none registered: `None`).
    registered_gone: Option<Duration>,
}

/// The figures for one number of registered processes.
pub(crate) struct Destroy {
    pub registered: usize,
    pub stderr: Stderr,
    pub client_gone: Summary,
    pub daemon_gone: Summary,
    pub daemon_after_client: Summary,
    pub registered_gone: Option<Summary>,
}

impl Destroy {
    /// The configuration as a target names it.
    pub(crate) fn target_label(&self) -> String {
        match self.stderr {
            Stderr::Log => format!("{} registered", self.registered),
            Stderr::Full => format!("{} registered, stderr a full pipe", self.registered),
        }
    }

    /// The configuration as a report's row names it.
    pub(crate) fn label(&self) -> String {
        match self.stderr {
            Stderr::Log => self.registered.to_string(),
            Stderr::Full => format!("{}, stderr a full pipe", self.registered),
        }
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "registered": self.registered,
            "stderr": match self.stderr {
                Stderr::Log => "a log file",
                Stderr::Full => "a full pipe nobody reads",
            },
            "client_gone": self.client_gone.json(),
            "daemon_gone": self.daemon_gone.json(),
            "daemon_gone_after_client_seen_dead": self.daemon_after_client.json(),
            "registered_gone": self.registered_gone.map(|s| s.json()),
        })
    }
}

/// `runs` runs of each configuration, interleaved (0, 1, 10, 100, 0, 1, …)
/// so that a burst of load from other users of the machine falls on all of
/// them alike. Returns the figures and every daemon's start-up time.
pub(crate) fn measure(
    dazai: &Dazai,
    scratch: &Scratch,
    runs: usize,
) -> Result<(Vec<Destroy>, Summary)> {
    let mut samples: Vec<Vec<Sample>> = CONFIGURATIONS.iter().map(|_| Vec::new()).collect();
    let mut startups = Vec::new();
    for run in 0..runs {
        for (config, &(registered, stderr)) in CONFIGURATIONS.iter().enumerate() {
            let (sample, startup) = one_run(dazai, scratch, registered, stderr, run)?;
            samples[config].push(sample);
            startups.push(startup);
        }
        if (run + 1) % 50 == 0 {
            println!("    {} of {runs} runs", run + 1);
        }
    }
    let figures = CONFIGURATIONS
        .iter()
        .zip(samples)
        .map(|(&(registered, stderr), samples)| Destroy {
            registered,
            stderr,
            client_gone: Summary::of_durations(samples.iter().map(|s| s.client_gone)),
            daemon_gone: Summary::of_durations(samples.iter().map(|s| s.daemon_gone)),
            daemon_after_client: Summary::of_durations(
                samples.iter().map(|s| s.daemon_after_client),
            ),
            registered_gone: (registered > 0)
                .then(|| Summary::of_durations(samples.iter().filter_map(|s| s.registered_gone))),
        })
        .collect();
    Ok((figures, Summary::of_durations(startups)))
}

fn one_run(
    dazai: &Dazai,
    scratch: &Scratch,
    registered: usize,
    stderr: Stderr,
    run: usize,
) -> Result<(Sample, Duration)> {
    let dir = scratch.dir(&format!("destroy-{registered}-{stderr:?}-{run}"))?;
    let mut daemon = dazai.start_daemon_with(&dir, &[], stderr)?;
    let mut sleepers = (0..registered)
        .map(|_| Watched::sleeper())
        .collect::<Result<Vec<_>>>()?;
    for sleeper in &sleepers {
        daemon.register(sleeper)?;
    }
    let mut client = dazai.attach_client(&daemon)?;
    std::thread::sleep(SETTLE);

    let killed = Instant::now();
    client.kill()?;
    let mut watch = DeathWatch::new(
        [&client.pidfd, &daemon.process.pidfd]
            .into_iter()
            .chain(sleepers.iter().map(|s| &s.pidfd)),
    );
    let waited = watch.wait_all(PATIENCE, "client, daemon and registered sleepers");
    let seen: Vec<Duration> = watch
        .seen()
        .iter()
        .map(|at| at.map_or(Duration::MAX, |at| at - killed))
        .collect();
    if let Err(error) = waited {
        bail!("{error}; daemon log: {}", daemon.log().trim());
    }

    // How each one died: the daemon and the sleepers by SIGKILL (the panic),
    // never SIGSYS (a syscall missing from the seccomp allowlist) or an exit.
    client.reap()?;
    let status = daemon.process.reap()?;
    if status.signal() != Some(libc::SIGKILL) {
        bail!(
            "the daemon ended with {status}, not by its own SIGKILL; log: {}",
            daemon.log().trim()
        );
    }
    for sleeper in &mut sleepers {
        let status = sleeper.reap()?;
        if status.signal() != Some(libc::SIGKILL) {
            bail!("a registered sleeper ended with {status}, not SIGKILL");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        Sample {
            client_gone: seen[0],
            daemon_gone: seen[1],
            daemon_after_client: seen[1].saturating_sub(seen[0]),
            registered_gone: seen[2..].iter().max().copied(),
        },
        daemon.startup,
    ))
}
