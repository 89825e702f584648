//! Running scenarios: each check is one line of progress (name, result,
//! figure) and one entry of the report; an error inside a check is a red
//! row carrying the error as its evidence, never a skip.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::env::{Lab, CONTROL_PATIENCE, PATIENCE};
use crate::report::{Check, Outcome};

/// What a check observed, built up fact by fact.
#[derive(Debug)]
pub struct Verdict {
    outcome: Outcome,
    figure: String,
    evidence: Vec<String>,
    patience: Duration,
}

impl Default for Verdict {
    fn default() -> Self {
        Self::new()
    }
}

impl Verdict {
    /// A verdict that passes unless a requirement fails.
    pub fn new() -> Self {
        Self {
            outcome: Outcome::Pass,
            figure: String::new(),
            evidence: Vec::new(),
            patience: PATIENCE,
        }
    }

    /// The verdict of a check run against a negative control's stand-in: it
    /// waits [`CONTROL_PATIENCE`] for the effect whose absence makes it red.
    fn against_a_stand_in() -> Self {
        Self {
            patience: CONTROL_PATIENCE,
            ..Self::new()
        }
    }

    /// How long to wait for the effect the claim is about (the daemon's
    /// end after a drop, a child's death), when its never coming is the red:
    /// [`PATIENCE`] for the product, [`CONTROL_PATIENCE`] for a stand-in.
    /// Waits for anything else (a heartbeat to attach) take `PATIENCE`.
    pub fn patience(&self) -> Duration {
        self.patience
    }

    /// Records an observed fact the claim rests on; if `held` is false the check is red.
    pub fn require(&mut self, held: bool, observed: impl Into<String>) -> &mut Self {
        let observed = observed.into();
        if held {
            self.evidence.push(observed);
        } else {
            self.outcome = Outcome::Fail;
            self.evidence.push(format!("FAILED: {observed}"));
        }
        self
    }

    /// Records a fact that is context, not a requirement.
    pub fn note(&mut self, observed: impl Into<String>) -> &mut Self {
        self.evidence.push(observed.into());
        self
    }

    /// Sets the figure shown in the table (latency, hits, …).
    pub fn figure(&mut self, figure: impl Into<String>) -> &mut Self {
        self.figure = figure.into();
        self
    }

    /// Marks a green verdict as a documented limit shown (a red one stays red).
    pub fn as_limit(&mut self) -> &mut Self {
        if self.outcome == Outcome::Pass {
            self.outcome = Outcome::Limit;
        }
        self
    }

    /// Whether any requirement failed so far.
    pub fn failed(&self) -> bool {
        self.outcome == Outcome::Fail
    }

    /// Its outcome.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Its evidence lines.
    pub fn evidence(&self) -> &[String] {
        &self.evidence
    }
}

/// Collects the checks of one threat-model row in one leg.
pub struct Recorder {
    row: &'static str,
    leg: String,
    /// The checks recorded so far.
    pub checks: Vec<Check>,
    verbose: bool,
}

impl Recorder {
    /// A recorder for `row` in `leg`.
    pub fn new(row: &'static str, leg: &str, verbose: bool) -> Self {
        Self {
            row,
            leg: leg.to_owned(),
            checks: Vec::new(),
            verbose,
        }
    }

    /// Runs one check named as a sentence of expected behaviour and prints its line.
    pub fn check(&mut self, scenario: &str, body: impl FnOnce(&mut Verdict) -> Result<()>) {
        let started = Instant::now();
        let mut verdict = Verdict::new();
        if let Err(error) = body(&mut verdict) {
            verdict.require(false, format!("could not gather the evidence: {error:#}"));
        }
        let took_ms = started.elapsed().as_millis() as u64;
        let check = Check {
            row: self.row.to_owned(),
            scenario: scenario.to_owned(),
            leg: self.leg.clone(),
            negative_control: false,
            outcome: verdict.outcome,
            figure: verdict.figure,
            evidence: verdict.evidence,
            took_ms,
        };
        println!(
            "  {:<17} {:<12} {:<11} {:>10}  {}  [{}]",
            check.leg,
            check.row,
            check.outcome.to_string(),
            human_ms(took_ms),
            check.scenario,
            check.figure
        );
        if self.verbose || check.outcome == Outcome::Fail {
            for line in &check.evidence {
                println!("      {line}");
            }
        }
        self.checks.push(check);
    }

    /// Runs a negative control: `body` points one of the row's own checks at
    /// a deliberately broken `stand_in`, and the control passes only if that
    /// check turns red for `reason` (an evidence line `FAILED: reason…`). A
    /// check that stays green against a broken stand-in proves nothing, and
    /// one that cannot gather its evidence is no control either.
    pub fn control(
        &mut self,
        stand_in: &str,
        reason: &str,
        body: impl FnOnce(&mut Verdict) -> Result<()>,
    ) {
        self.check(&format!("can fail: {stand_in}"), |v| {
            let mut broken = Verdict::against_a_stand_in();
            body(&mut broken)?;
            let failed_for_reason = broken
                .evidence()
                .iter()
                .any(|line| line.starts_with(&format!("FAILED: {reason}")));
            for line in broken.evidence() {
                v.note(format!("against the stand-in: {line}"));
            }
            v.require(
                broken.failed() && failed_for_reason,
                format!("the check turned red against the stand-in, for {reason:?}"),
            );
            v.figure(match (broken.failed(), failed_for_reason) {
                (true, true) => "turned red",
                (true, false) => "red for another reason",
                (false, _) => "stayed green",
            });
            Ok(())
        });
        if let Some(control) = self.checks.last_mut() {
            control.negative_control = true;
        }
    }

    /// Records a whole-row failure (its container could not start, …).
    pub fn row_failed(&mut self, scenario: &str, error: &anyhow::Error) {
        self.check(scenario, |_| Err(anyhow::anyhow!("{error:#}")));
    }
}

/// One threat-model row's scenario: its name and how to run it.
pub struct Scenario {
    /// The row's name in docs/threat-model.md.
    pub row: &'static str,
    /// Runs every check of the row.
    pub run: fn(&Lab, &mut Recorder) -> Result<()>,
}

/// `1234 ms` or `12.3 s`.
pub fn human_ms(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}
