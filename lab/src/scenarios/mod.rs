//! One scenario per threat-model row, each in a file named after it and
//! opening with the row it proves.

pub mod confinement;
pub mod core_dumps;
pub mod oom;
pub mod ptrace_snooping;
pub mod reference;
pub mod root_reads_memory;
pub mod session_loss;
pub mod swap;
pub mod systemd_unit;
pub mod who_may_obtain;
pub mod wipe;

use crate::runner::Scenario;

/// Every scenario, in the order of docs/threat-model.md.
pub const ALL: &[Scenario] = &[
    Scenario {
        row: "swap",
        run: swap::run,
    },
    Scenario {
        row: "core dumps",
        run: core_dumps::run,
    },
    Scenario {
        row: "session loss",
        run: session_loss::run,
    },
    Scenario {
        row: "wipe",
        run: wipe::run,
    },
    Scenario {
        row: "confinement",
        run: confinement::run,
    },
    Scenario {
        row: "ptrace snooping",
        run: ptrace_snooping::run,
    },
    Scenario {
        row: "OOM",
        run: oom::run,
    },
    Scenario {
        row: "root reads memory",
        run: root_reads_memory::run,
    },
    Scenario {
        row: "who may obtain a secret",
        run: who_may_obtain::run,
    },
    Scenario {
        row: "systemd unit",
        run: systemd_unit::run,
    },
    Scenario {
        row: "reference",
        run: reference::run,
    },
];
