//! Destroy latency: from SIGKILL to the heartbeat client (its socket closes as
//! it dies) to (a) every victim dead and (b) the daemon dead, each seen by the
//! bench through its pidfd. The victims are processes registered with
//! `REGISTER` (the panic signals each), or a tree the daemon started with
//! `--exec` (the panic kills its process group and, where the daemon could
//! make one, its cgroup with one `cgroup.kill` write). Once more with nothing
//! registered and the daemon's stderr a full pipe nobody reads (its log lines
//! cannot be written: the panic must not wait for them). Start-up time comes
//! free with every run: from just before the daemon's exec to its ready line.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::dazai::{Daemon, Dazai, Scratch, Stderr, PATIENCE};
use super::process::{DeathWatch, Pidfd, Watched};
use super::stats::Summary;

/// What the panic has to kill besides the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Victims {
    /// N `sleep`s of the bench, each registered (`REGISTER PID`).
    Registered(usize),
    /// `sh` started by the daemon with `--exec`, and the N `sleep`s it started.
    Tree(usize),
}

/// The victims in each configuration, and where the daemon's stderr goes.
pub(crate) const CONFIGURATIONS: [(Victims, Stderr); 7] = [
    (Victims::Registered(0), Stderr::Log),
    (Victims::Registered(1), Stderr::Log),
    (Victims::Registered(10), Stderr::Log),
    (Victims::Registered(100), Stderr::Log),
    (Victims::Tree(10), Stderr::Log),
    (Victims::Tree(100), Stderr::Log),
    (Victims::Registered(0), Stderr::Full),
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
    /// The last victim seen dead (no victims: `None`).
    victims_gone: Option<Duration>,
    /// How the daemon said it killed the tree (its PANIC line), if there was one.
    tree_killed_by: Option<String>,
}

/// The figures for one configuration.
pub(crate) struct Destroy {
    pub victims: Victims,
    pub stderr: Stderr,
    pub client_gone: Summary,
    pub daemon_gone: Summary,
    pub daemon_after_client: Summary,
    pub victims_gone: Option<Summary>,
    /// For a tree: how the daemon killed it, as its PANIC line says (the same
    /// in every run, or the runs' answers joined).
    pub tree_killed_by: Option<String>,
}

impl Destroy {
    /// The configuration as a target names it.
    pub(crate) fn target_label(&self) -> String {
        let victims = match self.victims {
            Victims::Registered(n) => format!("{n} registered"),
            Victims::Tree(n) => format!("a `--exec` tree of {}", n + 1),
        };
        match self.stderr {
            Stderr::Log => victims,
            Stderr::Full => format!("{victims}, stderr a full pipe"),
        }
    }

    /// The configuration as a report's row names it.
    pub(crate) fn label(&self) -> String {
        let victims = match self.victims {
            Victims::Registered(n) => n.to_string(),
            Victims::Tree(n) => format!("tree of {}", n + 1),
        };
        match self.stderr {
            Stderr::Log => victims,
            Stderr::Full => format!("{victims}, stderr a full pipe"),
        }
    }

    /// What "every victim dead" means in this configuration.
    pub(crate) fn victims_gone_label(&self) -> &'static str {
        match self.victims {
            Victims::Registered(_) => "every registered process dead",
            Victims::Tree(_) => "every process of the tree dead",
        }
    }

    pub(crate) fn json(&self) -> Value {
        let (registered, tree) = match self.victims {
            Victims::Registered(n) => (n, None),
            Victims::Tree(n) => (0, Some(n + 1)),
        };
        json!({
            "registered": registered,
            "exec_tree_processes": tree,
            "tree_killed_by": self.tree_killed_by,
            "stderr": match self.stderr {
                Stderr::Log => "a log file",
                Stderr::Full => "a full pipe nobody reads",
            },
            "client_gone": self.client_gone.json(),
            "daemon_gone": self.daemon_gone.json(),
            "daemon_gone_after_client_seen_dead": self.daemon_after_client.json(),
            "victims_gone": self.victims_gone.map(|s| s.json()),
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
        for (config, &(victims, stderr)) in CONFIGURATIONS.iter().enumerate() {
            let (sample, startup) = one_run(dazai, scratch, victims, stderr, run)?;
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
        .map(|(&(victims, stderr), samples)| Destroy {
            victims,
            stderr,
            client_gone: Summary::of_durations(samples.iter().map(|s| s.client_gone)),
            daemon_gone: Summary::of_durations(samples.iter().map(|s| s.daemon_gone)),
            daemon_after_client: Summary::of_durations(
                samples.iter().map(|s| s.daemon_after_client),
            ),
            victims_gone: (victims != Victims::Registered(0))
                .then(|| Summary::of_durations(samples.iter().filter_map(|s| s.victims_gone))),
            tree_killed_by: tree_killed_by(&samples),
        })
        .collect();
    Ok((figures, Summary::of_durations(startups)))
}

/// How the daemon killed the tree, as every run's PANIC line said it (one
/// answer when they agree, all of them otherwise).
fn tree_killed_by(samples: &[Sample]) -> Option<String> {
    let mut answers: Vec<&str> = samples
        .iter()
        .filter_map(|s| s.tree_killed_by.as_deref())
        .collect();
    answers.sort_unstable();
    answers.dedup();
    (!answers.is_empty()).then(|| answers.join(" / "))
}

fn one_run(
    dazai: &Dazai,
    scratch: &Scratch,
    victims: Victims,
    stderr: Stderr,
    run: usize,
) -> Result<(Sample, Duration)> {
    // A plain name: the tree's shell script names paths in this directory.
    let victims_name = match victims {
        Victims::Registered(n) => format!("registered-{n}"),
        Victims::Tree(n) => format!("tree-{n}"),
    };
    let dir = scratch.dir(&format!("destroy-{victims_name}-{stderr:?}-{run}"))?;
    let (registered, tree) = match victims {
        Victims::Registered(n) => (n, None),
        Victims::Tree(n) => (0, Some(n)),
    };
    let exec = tree.map(|n| exec_tree_args(&dir, n));
    let exec_args: Vec<&str> = exec.iter().flatten().map(String::as_str).collect();
    let mut daemon = dazai.start_daemon_with(&dir, &exec_args, stderr)?;
    let tree = match tree {
        Some(n) => tree_pidfds(&dir, n, &daemon)?,
        None => Vec::new(),
    };
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
            .chain(sleepers.iter().map(|s| &s.pidfd))
            .chain(tree.iter()),
    );
    let waited = watch.wait_all(PATIENCE, "client, daemon and victims");
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
    let tree_killed_by = (!tree.is_empty() && stderr == Stderr::Log)
        .then(|| panic_line_kill(&daemon.log()))
        .transpose()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        Sample {
            client_gone: seen[0],
            daemon_gone: seen[1],
            daemon_after_client: seen[1].saturating_sub(seen[0]),
            victims_gone: seen[2..].iter().max().copied(),
            tree_killed_by,
        },
        daemon.startup,
    ))
}

/// `--exec sh -c …`: a shell that starts `n` sleeps in the background, then
/// writes its pid to `DIR/tree` (renamed into place, so never read half
/// written) and waits.
fn exec_tree_args(dir: &Path, n: usize) -> Vec<String> {
    let ready = dir.join("tree");
    let script = format!(
        "i=0; while [ $i -lt {n} ]; do sleep 1000 & i=$((i+1)); done; echo $$ > {ready}.part && mv {ready}.part {ready}; wait",
        ready = ready.display()
    );
    ["--exec", "sh", "-c", &script].map(str::to_owned).to_vec()
}

/// Pidfds of the `--exec` shell and of its `n` sleeps, once it is ready.
fn tree_pidfds(dir: &Path, n: usize, daemon: &Daemon) -> Result<Vec<Pidfd>> {
    let ready = dir.join("tree");
    let started = Instant::now();
    while !ready.exists() {
        if started.elapsed() > PATIENCE || daemon.process.pidfd.has_exited() {
            bail!(
                "the --exec tree did not start; daemon log: {}",
                daemon.log().trim()
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let shell: u32 = std::fs::read_to_string(&ready)?
        .trim()
        .parse()
        .context("the --exec shell's pid")?;
    // A child may not have exec'd `sleep` yet, and the `mv` may not be
    // reaped yet: wait until exactly the n sleeps are there.
    let sleeps = loop {
        let sleeps = sleeps_of(shell)?;
        if sleeps.len() == n {
            break sleeps;
        }
        if started.elapsed() > PATIENCE {
            bail!("the --exec shell has {} sleeps, not {n}", sleeps.len());
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    std::iter::once(shell)
        .chain(sleeps)
        .map(Pidfd::open)
        .collect()
}

/// The children of `shell` that run `sleep`.
fn sleeps_of(shell: u32) -> Result<Vec<u32>> {
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .context("read the --exec shell's children (CONFIG_PROC_CHILDREN)")?;
    let is_sleep = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "sleep")
    };
    Ok(children
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .filter(is_sleep)
        .collect())
}

/// What the PANIC line says was killed of the supervised tree, e.g.
/// `process group 123 and its cgroup`, without the pid.
fn panic_line_kill(log: &str) -> Result<String> {
    let line = log
        .lines()
        .find(|line| line.contains("PANIC: "))
        .with_context(|| format!("no PANIC line in the daemon's log: {}", log.trim()))?;
    let supervised = line
        .split_once("and supervised ")
        .and_then(|(_, rest)| rest.split_once("; wiped"))
        .map(|(tree, _)| tree)
        .with_context(|| format!("the PANIC line names no supervised tree: {line}"))?;
    Ok(supervised
        .split_whitespace()
        .filter(|word| !word.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(" "))
}
