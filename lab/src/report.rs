//! The evidence report: one check per scenario and leg, as JSON (machine)
//! and Markdown (docs): a table of the legs (architecture, machine, kernel,
//! the SHA-256 of the `dazai` binary each tested) and a table with one line
//! per scenario and one column per leg.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a scenario observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The evidence shows the claim holds.
    Pass,
    /// The evidence contradicts the claim, or the evidence could not be gathered.
    Fail,
    /// A documented limit, demonstrated as such (not a protection).
    Limit,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Limit => "limit shown",
        })
    }
}

/// One scenario's result.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    /// The threat-model row.
    pub row: String,
    /// The scenario, as a sentence of expected behaviour.
    pub scenario: String,
    /// The leg it ran in: `x86_64 containers`, `x86_64 VM`, `aarch64 VM`.
    pub leg: String,
    /// Whether it is a negative control: one of the row's checks pointed at
    /// a broken stand-in, passing only if that check turned red.
    #[serde(default)]
    pub negative_control: bool,
    /// What it observed.
    pub outcome: Outcome,
    /// The measured figure (latency in ms, hits, bytes), for the table.
    pub figure: String,
    /// What was observed, one fact per line.
    pub evidence: Vec<String>,
    /// How long the scenario took, in ms.
    pub took_ms: u64,
}

/// The whole lab run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// The id `cargo xtask lab` gave this run: a release checks that the
    /// report it ships is its own run's.
    #[serde(default)]
    pub run_id: String,
    /// Every leg that ran, in run order.
    pub legs: Vec<Leg>,
    /// Image build time in ms (0 when cached) and whether each image was cached.
    pub images: Vec<ImageBuild>,
    /// Every check, in run order.
    pub checks: Vec<Check>,
    /// Wall time of the whole run, in ms.
    pub total_ms: u64,
}

/// One leg: a `dazai` binary of one architecture on one kind of machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Leg {
    /// `x86_64 containers`, `x86_64 VM`, `aarch64 VM` (the checks' `leg`).
    pub name: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// The kernel it ran on (`uname -r`), and for a VM the Debian package.
    pub kernel: String,
    /// SHA-256 of the `dazai` binary under test.
    pub dazai_sha256: String,
    /// Its path when tested.
    pub dazai_path: String,
    /// SHA-256 of `/proc/PID/exe` of every daemon the leg started, taken
    /// inside its machine: each must be `dazai_sha256`.
    pub daemons_seen: Vec<String>,
    /// SHA-256 of each other executable the leg ran: `dazai-mcp`, shipped
    /// beside `dazai`, and the guest tools (`lab-probe`, `lab-observer`,
    /// `lab-init`), since the evidence is only as good as its observer.
    #[serde(default)]
    pub tools_sha256: std::collections::BTreeMap<String, String>,
    /// Wall time of the leg, in ms (a VM's boot included).
    pub took_ms: u64,
}

impl Leg {
    /// Whether it started daemons and each ran the binary the leg names.
    pub fn ran_what_it_names(&self) -> bool {
        !self.daemons_seen.is_empty()
            && self
                .daemons_seen
                .iter()
                .all(|sha| *sha == self.dazai_sha256)
    }

    /// `31 of 31`: daemons whose `/proc/PID/exe` had the leg's SHA-256.
    fn daemons_summary(&self) -> String {
        let same = self
            .daemons_seen
            .iter()
            .filter(|sha| **sha == self.dazai_sha256)
            .count();
        format!("{same} of {}", self.daemons_seen.len())
    }
}

/// One image the lab needed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageBuild {
    /// Docker's image ID (`sha256:…`), what actually ran.
    #[serde(default)]
    pub id: String,
    /// `name:tag` (the tag is the hash of its inputs).
    pub image: String,
    /// Whether it was already there.
    pub cached: bool,
    /// Time spent making it (or checking it), in ms.
    pub took_ms: u64,
}

impl Report {
    /// Whether every leg ran checks, every check passed or showed its limit,
    /// and every row of every leg has a negative control: a run with nothing
    /// in it (or a leg with nothing) is never green, nor is a row that was
    /// never shown able to fail.
    pub fn is_green(&self) -> bool {
        !self.legs.is_empty()
            && self
                .legs
                .iter()
                .all(|leg| self.checks.iter().any(|c| c.leg == leg.name) && leg.ran_what_it_names())
            && self.rows_without_a_control().is_empty()
            && self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    /// `(leg, row)` pairs that ran checks but no negative control.
    pub fn rows_without_a_control(&self) -> Vec<(&str, &str)> {
        let mut missing: Vec<(&str, &str)> = Vec::new();
        for check in &self.checks {
            let pair = (check.leg.as_str(), check.row.as_str());
            let controlled = self
                .checks
                .iter()
                .any(|c| c.negative_control && c.leg == check.leg && c.row == check.row);
            if !controlled && !missing.contains(&pair) {
                missing.push(pair);
            }
        }
        missing
    }

    /// The Markdown tables for `docs/threat-model.md`.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Evidence of {} checks in {} legs, total {:.1} s.\n\n",
            self.checks.len(),
            self.legs.len(),
            self.total_ms as f64 / 1000.0
        );
        out.push_str("| leg | kernel | dazai SHA-256 | daemons that ran it (`/proc/PID/exe`) | checks | time |\n|---|---|---|---|---|---|\n");
        for leg in &self.legs {
            let checks: Vec<&Check> = self.checks.iter().filter(|c| c.leg == leg.name).collect();
            let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
            out.push_str(&format!(
                "| {} | {} | `{}` | {} | {} ({}) | {:.1} s |\n",
                leg.name,
                leg.kernel,
                leg.dazai_sha256,
                leg.daemons_summary(),
                checks.len(),
                if failed == 0 {
                    "green".to_owned()
                } else {
                    format!("{failed} FAIL")
                },
                leg.took_ms as f64 / 1000.0
            ));
        }
        out.push_str("\n| row | scenario |");
        for leg in &self.legs {
            out.push_str(&format!(" {} |", leg.name));
        }
        out.push_str("\n|---|---|");
        out.push_str(&"---|".repeat(self.legs.len()));
        out.push('\n');
        let mut scenarios: Vec<(&str, &str)> = Vec::new();
        for check in &self.checks {
            if !scenarios.contains(&(check.row.as_str(), check.scenario.as_str())) {
                scenarios.push((&check.row, &check.scenario));
            }
        }
        for (row, scenario) in scenarios {
            out.push_str(&format!("| {row} | {} |", cell(scenario)));
            for leg in &self.legs {
                let found = self
                    .checks
                    .iter()
                    .find(|c| c.leg == leg.name && c.row == row && c.scenario == scenario);
                match found {
                    Some(check) if check.negative_control && check.outcome == Outcome::Pass => {
                        out.push_str(" turned red |");
                    }
                    Some(check) if check.figure.is_empty() => {
                        out.push_str(&format!(" {} |", check.outcome));
                    }
                    Some(check) => {
                        out.push_str(&format!(" {}: {} |", check.outcome, cell(&check.figure)));
                    }
                    None => out.push_str(" — |"),
                }
            }
            out.push('\n');
        }
        out.push_str("\n— : a check that does not apply to that leg: the memfd_secret backend's where the kernel has none and the fallback's where it has one, Yama's `ptrace_scope` 1 where the kernel has Yama, the daemon's integration suite inside the VMs (on this machine it runs in `cargo xtask ci`).\n");
        out.push_str("can fail: a negative control, the row's own check pointed at a broken stand-in; \"turned red\" is the control passing.\n");
        out
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}
