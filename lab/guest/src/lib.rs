//! What the lab runs inside its machines (containers and VMs), built for
//! each architecture the lab covers (static musl, so one file runs in a
//! Debian container and in a bare initramfs alike):
//!
//! - `lab-probe`: small programs (a launcher, stand-ins, attackers);
//! - `lab-observer`: the root observer, with [`procfs`] and [`tracer`];
//! - `lab-init`: PID 1 of the lab's VMs, running the host's requests.
//!
//! The host side (`lab`) parses what they print with the same types.

pub mod procfs;
pub mod tracer;
