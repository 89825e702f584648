//! The evidence report: one check per scenario, as JSON (machine) and a
//! Markdown table (docs), keyed by the `dazai` binary's SHA-256 and the
//! architecture, so more legs (aarch64) add rows, not columns.

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
    /// `x86_64` (containers on this kernel) or, later, `aarch64`.
    pub arch: String,
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
    /// SHA-256 of the `dazai` binary under test.
    pub dazai_sha256: String,
    /// Its path when tested.
    pub dazai_path: String,
    /// The kernel the containers ran on (`uname -r`).
    pub kernel: String,
    /// Image build time in ms (0 when cached) and whether each image was cached.
    pub images: Vec<ImageBuild>,
    /// Every check, in run order.
    pub checks: Vec<Check>,
    /// Wall time of the whole run, in ms.
    pub total_ms: u64,
}

/// One image the lab needed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageBuild {
    /// `name:tag` (the tag is the hash of its inputs).
    pub image: String,
    /// Whether it was already there.
    pub cached: bool,
    /// Time spent making it (or checking it), in ms.
    pub took_ms: u64,
}

impl Report {
    /// Whether every check passed or showed its limit.
    pub fn is_green(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }

    /// The Markdown table for `docs/threat-model.md`.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "Evidence for `dazai` with SHA-256 `{}`, kernel {}, total {:.1} s.\n\n",
            self.dazai_sha256,
            self.kernel,
            self.total_ms as f64 / 1000.0
        ));
        out.push_str("| row | scenario | arch | result | figure | dazai SHA-256 |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for check in &self.checks {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | `{}` |\n",
                check.row,
                check.scenario.replace('|', "\\|"),
                check.arch,
                check.outcome,
                check.figure.replace('|', "\\|"),
                short_sha(&self.dazai_sha256)
            ));
        }
        out
    }
}

/// The first 12 hex digits, enough to tell builds apart in a table.
pub fn short_sha(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
