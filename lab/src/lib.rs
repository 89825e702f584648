//! The verification lab of ningen-shikkaku: attacks the real `dazai` binary
//! in containers and records what it observed as evidence (docs/lab.md).
//!
//! - [`env`](mod@env): the `Lab`/`Env` builder scenarios are written with;
//! - [`scenarios`]: one module per threat-model row;
//! - [`procfs`], [`tracer`]: what the root observer (`lab-observer`) reads and does;
//! - [`images`]: the locally built images, cached by input hash;
//! - [`host`]: guards that restore every host setting a scenario changes;
//! - [`report`]: the evidence report (JSON and Markdown).

pub mod env;
pub mod host;
pub mod images;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod tracer;
