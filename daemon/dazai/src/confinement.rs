//! Seccomp confinement of the sealed daemon (cargo feature `seccomp`, Linux).
//!
//! After start-up the daemon needs only what its event loop, its panic and a
//! Rust abort use. Everything else (`execve`, `open`/`openat`, `connect`,
//! `socket`, `ptrace`, …) kills the whole process with SIGSYS. The allowlist is
//! data, per architecture, with the reason for each entry; `dazai daemon
//! --print-seccomp` prints it and a snapshot test keeps both architectures
//! under review.

use std::fmt;

/// The architectures the allowlist is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// x86_64.
    X86_64,
    /// aarch64 (no `open`, `poll`, `unlink`, `rmdir`: only their `*at`/`p*` forms).
    Aarch64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        })
    }
}

/// What an allowed syscall's arguments must satisfy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// Argument `index` must be one of `values` (named for the listing).
    OneOf {
        /// Which argument (0-based).
        index: u8,
        /// The allowed values and their names.
        values: &'static [(u64, &'static str)],
    },
    /// Argument `index` must not have any bit of `mask` set.
    NoBits {
        /// Which argument (0-based).
        index: u8,
        /// The forbidden bits.
        mask: u64,
        /// Their name.
        name: &'static str,
    },
    /// Argument `index`, a C `int`, must be none of `values`. Compared as 32
    /// bits, as the kernel reads it: upper bits set in the 64-bit register
    /// must not carry a forbidden value past the filter.
    IntNoneOf {
        /// Which argument (0-based).
        index: u8,
        /// The forbidden values (as 32-bit patterns) and their names.
        values: &'static [(u64, &'static str)],
    },
    /// Every one of these holds.
    All(&'static [Args]),
}

/// One allowed syscall.
#[derive(Clone, Copy, Debug)]
pub struct Allowed {
    /// The syscall's name.
    pub name: &'static str,
    /// What its arguments must satisfy.
    pub args: Args,
    /// Why the sealed daemon needs it.
    pub why: &'static str,
}

const SIGNAL_0_OR_KILL: &[(u64, &str)] = &[(0, "0"), (libc::SIGKILL as u64, "SIGKILL")];
/// `kill(2)` targets that reach more than one process the daemon chose:
/// -1 is every process the user may signal, 0 the daemon's own process group.
const BROADCAST_TARGETS: &[(u64, &str)] = &[(0xffff_ffff, "-1"), (0, "0")];
const PROT_EXEC: u64 = libc::PROT_EXEC as u64;

const fn any(name: &'static str, why: &'static str) -> Allowed {
    Allowed {
        name,
        args: Args::Any,
        why,
    }
}

const fn with(name: &'static str, args: Args, why: &'static str) -> Allowed {
    Allowed { name, args, why }
}

/// Calls both architectures need, by the same name.
const COMMON: &[Allowed] = &[
    any("accept4", "accept a client on the listening socket"),
    any("brk", "heap growth for replies and log lines"),
    any(
        "clock_gettime",
        "deadlines (when the vDSO falls back to the syscall)",
    ),
    any("close", "close a finished connection"),
    any("exit", "thread exit"),
    any("exit_group", "clean shutdown and one-shot exit"),
    with(
        "fcntl",
        Args::OneOf {
            index: 1,
            values: &[(libc::F_GETFD as u64, "F_GETFD")],
        },
        "std checks a descriptor is open before closing it (debug builds)",
    ),
    any("futex", "std's locks (stdout, stderr)"),
    any(
        "getpgid",
        "is a `get` requester in the supervised process group?",
    ),
    any("getpid", "the panic's self-SIGKILL; log lines"),
    any("getsockopt", "SO_PEERCRED of each client"),
    any("gettid", "abort(3) on a Rust panic"),
    any("getuid", "refuse clients of another uid"),
    with(
        "ioctl",
        Args::OneOf {
            index: 1,
            // The cast is needed on targets where FIONBIO is not a u64.
            #[allow(clippy::unnecessary_cast)]
            values: &[(libc::FIONBIO as u64, "FIONBIO")],
        },
        "switch a connection between blocking and non-blocking",
    ),
    with(
        "kill",
        Args::All(&[
            Args::IntNoneOf {
                index: 0,
                values: BROADCAST_TARGETS,
            },
            Args::OneOf {
                index: 1,
                values: SIGNAL_0_OR_KILL,
            },
        ]),
        "the panic: SIGKILL the process group and itself; 0 checks a pid to register",
    ),
    any("madvise", "the allocator returning memory"),
    with(
        "mmap",
        Args::NoBits {
            index: 2,
            mask: PROT_EXEC,
            name: "PROT_EXEC",
        },
        "allocation, never executable",
    ),
    with(
        "mprotect",
        Args::NoBits {
            index: 2,
            mask: PROT_EXEC,
            name: "PROT_EXEC",
        },
        "allocation, never executable",
    ),
    any("mremap", "allocation growth"),
    any("munlock", "a secret buffer released at clean shutdown"),
    any(
        "munmap",
        "allocation release, secret buffers at clean shutdown",
    ),
    any("pidfd_open", "hold a registered process by pidfd"),
    with(
        "pidfd_send_signal",
        Args::OneOf {
            index: 1,
            values: SIGNAL_0_OR_KILL,
        },
        "the panic: SIGKILL registered processes; 0 checks they live",
    ),
    any("read", "signalfd; the log"),
    any(
        "recvfrom",
        "requests and PINGs (std reads sockets with recv)",
    ),
    any(
        "recvmsg",
        "a GET on the capability, with its reply socket (SCM_RIGHTS)",
    ),
    any(
        "restart_syscall",
        "the kernel restarting an interrupted call",
    ),
    any("rt_sigaction", "abort(3) restores SIGABRT's default action"),
    any("rt_sigprocmask", "abort(3) unblocks SIGABRT"),
    any("rt_sigreturn", "return from a signal handler"),
    any(
        "sendto",
        "replies, and the log to a socket (std writes sockets with send)",
    ),
    any("setsockopt", "SO_SNDTIMEO before writing a reply"),
    any("sigaltstack", "std's stack-overflow guard at exit"),
    with(
        "tgkill",
        Args::OneOf {
            index: 2,
            values: &[(libc::SIGABRT as u64, "SIGABRT")],
        },
        "abort(3): a Rust panic ends in SIGABRT, not SIGSYS",
    ),
    with(
        "tkill",
        Args::OneOf {
            index: 1,
            values: &[(libc::SIGABRT as u64, "SIGABRT")],
        },
        "musl's abort(3) raises SIGABRT with tkill, not tgkill",
    ),
    any("wait4", "reap the supervised shim"),
    any("waitid", "reap the supervised shim"),
    any("write", "the log and stdout"),
];

/// Calls that exist only on x86_64 (aarch64 uses the newer forms).
const X86_64_ONLY: &[Allowed] = &[
    any(
        "poll",
        "the event loop's one blocking call; the log's check for room",
    ),
    any("ppoll", "the event loop and the log (libc may use ppoll)"),
    any(
        "rmdir",
        "remove the supervised cgroup after the program ends",
    ),
    any("unlink", "remove socket and pidfile at clean shutdown"),
];

/// Calls that exist only on aarch64 in this role.
const AARCH64_ONLY: &[Allowed] = &[
    any(
        "ppoll",
        "the event loop's one blocking call; the log's check for room",
    ),
    any(
        "unlinkat",
        "remove socket, pidfile and the supervised cgroup at clean shutdown",
    ),
];

/// The allowlist for `arch`, sorted by name.
pub fn allowlist(arch: Arch) -> Vec<Allowed> {
    let only = match arch {
        Arch::X86_64 => X86_64_ONLY,
        Arch::Aarch64 => AARCH64_ONLY,
    };
    let mut list: Vec<Allowed> = COMMON.iter().chain(only).copied().collect();
    list.sort_by_key(|allowed| allowed.name);
    list
}

/// The allowlist as the reviewed listing: one line per syscall.
pub fn describe_for(arch: Arch) -> String {
    let mut out =
        format!("seccomp allowlist for {arch}: everything else kills the process (SIGSYS)\n");
    for allowed in allowlist(arch) {
        let rule = describe_args(allowed.args)
            .map(|rule| format!(" [{rule}]"))
            .unwrap_or_default();
        out.push_str(&format!("{:<18}{rule:<26} {}\n", allowed.name, allowed.why));
    }
    out
}

/// An argument rule for the listing (`None`: any arguments).
fn describe_args(args: Args) -> Option<String> {
    let names = |values: &[(u64, &str)]| {
        let names: Vec<&str> = values.iter().map(|(_, name)| *name).collect();
        names.join("|")
    };
    match args {
        Args::Any => None,
        Args::OneOf { index, values } => Some(format!("arg{index} in {}", names(values))),
        Args::NoBits { index, name, .. } => Some(format!("arg{index} without {name}")),
        Args::IntNoneOf { index, values } => Some(format!("arg{index} not {}", names(values))),
        Args::All(parts) => {
            let parts: Vec<String> = parts.iter().filter_map(|p| describe_args(*p)).collect();
            (!parts.is_empty()).then(|| parts.join(", "))
        }
    }
}

/// The architecture this build runs on, if the allowlist is written for it.
pub fn host_arch() -> Option<Arch> {
    if cfg!(target_arch = "x86_64") {
        Some(Arch::X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(Arch::Aarch64)
    } else {
        None
    }
}

/// Whether the daemon runs under its seccomp allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confinement {
    /// Built without the `seccomp` feature.
    #[cfg(not(all(feature = "seccomp", target_os = "linux")))]
    Off,
    /// Sealed: this many syscalls are allowed, every other one kills.
    #[cfg(all(feature = "seccomp", target_os = "linux"))]
    Sealed {
        /// Number of allowed syscalls.
        allowed: usize,
    },
}

impl fmt::Display for Confinement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(not(all(feature = "seccomp", target_os = "linux")))]
            Self::Off => write!(
                f,
                "off (built with --no-default-features: no seccomp filter)"
            ),
            #[cfg(all(feature = "seccomp", target_os = "linux"))]
            Self::Sealed { allowed } => write!(f, "on ({allowed} syscalls allowed)"),
        }
    }
}

/// The allowlist this build would install, as printed by `--print-seccomp`.
pub fn describe() -> String {
    match host_arch() {
        Some(arch) if cfg!(feature = "seccomp") => describe_for(arch),
        Some(arch) => format!(
            "seccomp: not built in (build with --features seccomp); it would install:\n{}",
            describe_for(arch)
        ),
        None => "seccomp: no allowlist is written for this architecture\n".to_owned(),
    }
}

/// Installs the allowlist on every thread of the process.
#[cfg(all(feature = "seccomp", target_os = "linux"))]
pub fn seal() -> Result<Confinement, String> {
    let arch = host_arch().ok_or("seccomp: no allowlist is written for this architecture")?;
    let program = filter::compile(arch)?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| {
        format!("cannot install the seccomp filter ({e}); fix: run on Linux >= 3.17 with seccomp, or build without --features seccomp")
    })?;
    Ok(Confinement::Sealed {
        allowed: allowlist(arch).len(),
    })
}

/// Without the `seccomp` feature nothing is installed.
#[cfg(not(all(feature = "seccomp", target_os = "linux")))]
pub fn seal() -> Result<Confinement, String> {
    Ok(Confinement::Off)
}

/// Turning the allowlist into a BPF program for the running architecture.
#[cfg(all(feature = "seccomp", target_os = "linux"))]
pub mod filter {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::{allowlist, Arch, Args};

    /// The BPF program for `arch` (which must be the running one: the syscall
    /// numbers come from this build's libc).
    pub fn compile(arch: Arch) -> Result<BpfProgram, String> {
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for allowed in allowlist(arch) {
            let number = syscall_number(allowed.name)
                .ok_or_else(|| format!("seccomp: unknown syscall {} on {arch}", allowed.name))?;
            rules.insert(number, rules_for(allowed.args)?);
        }
        let target = match arch {
            Arch::X86_64 => TargetArch::x86_64,
            Arch::Aarch64 => TargetArch::aarch64,
        };
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            target,
        )
        .map_err(|e| format!("seccomp: invalid filter ({e})"))?;
        filter
            .try_into()
            .map_err(|e| format!("seccomp: cannot compile the filter ({e})"))
    }

    /// Argument rules: alternatives are separate rules (any may match); an
    /// empty list allows the call whatever its arguments.
    fn rules_for(args: Args) -> Result<Vec<SeccompRule>, String> {
        let alternatives = alternatives(args)?;
        if alternatives.iter().all(Vec::is_empty) {
            return Ok(Vec::new());
        }
        alternatives
            .into_iter()
            .map(|conditions| {
                SeccompRule::new(conditions).map_err(|e| format!("seccomp: bad rule ({e})"))
            })
            .collect()
    }

    /// `args` as alternatives (any may hold), each a list of conditions that
    /// must all hold.
    fn alternatives(args: Args) -> Result<Vec<Vec<SeccompCondition>>, String> {
        let condition = |index, len, op, value| {
            SeccompCondition::new(index, len, op, value)
                .map_err(|e| format!("seccomp: bad condition ({e})"))
        };
        use SeccompCmpArgLen::{Dword, Qword};
        Ok(match args {
            Args::Any => vec![Vec::new()],
            Args::OneOf { index, values } => values
                .iter()
                .map(|(value, _)| Ok(vec![condition(index, Qword, SeccompCmpOp::Eq, *value)?]))
                .collect::<Result<_, String>>()?,
            Args::NoBits { index, mask, .. } => vec![vec![condition(
                index,
                Qword,
                SeccompCmpOp::MaskedEq(mask),
                0,
            )?]],
            Args::IntNoneOf { index, values } => vec![values
                .iter()
                .map(|(value, _)| condition(index, Dword, SeccompCmpOp::Ne, *value))
                .collect::<Result<_, String>>()?],
            Args::All(parts) => {
                let mut product = vec![Vec::new()];
                for part in parts {
                    let choices = alternatives(*part)?;
                    product = product
                        .iter()
                        .flat_map(|so_far: &Vec<SeccompCondition>| {
                            choices
                                .iter()
                                .map(move |choice| so_far.iter().chain(choice).cloned().collect())
                        })
                        .collect();
                }
                product
            }
        })
    }

    /// The running architecture's number for a syscall name.
    fn syscall_number(name: &str) -> Option<i64> {
        macro_rules! numbers {
            ($($name:ident),* $(,)?) => {
                match name {
                    $(stringify!($name) => Some(syscall_consts::$name),)*
                    _ => arch_specific(name),
                }
            };
        }
        numbers!(
            accept4,
            brk,
            clock_gettime,
            close,
            exit,
            exit_group,
            fcntl,
            futex,
            getpgid,
            getpid,
            getsockopt,
            gettid,
            getuid,
            ioctl,
            kill,
            madvise,
            mmap,
            mprotect,
            mremap,
            munlock,
            munmap,
            pidfd_open,
            pidfd_send_signal,
            read,
            recvfrom,
            recvmsg,
            restart_syscall,
            rt_sigaction,
            rt_sigprocmask,
            rt_sigreturn,
            sendto,
            setsockopt,
            sigaltstack,
            tgkill,
            tkill,
            wait4,
            waitid,
            write,
            ppoll,
            unlinkat,
        )
    }

    #[cfg(target_arch = "x86_64")]
    fn arch_specific(name: &str) -> Option<i64> {
        match name {
            "poll" => Some(libc::SYS_poll),
            "rmdir" => Some(libc::SYS_rmdir),
            "unlink" => Some(libc::SYS_unlink),
            _ => None,
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn arch_specific(_name: &str) -> Option<i64> {
        None
    }

    /// `libc::SYS_*` under the syscall's own name, for the macro above.
    #[allow(non_upper_case_globals)]
    mod syscall_consts {
        pub use libc::{
            SYS_accept4 as accept4, SYS_brk as brk, SYS_clock_gettime as clock_gettime,
            SYS_close as close, SYS_exit as exit, SYS_exit_group as exit_group, SYS_fcntl as fcntl,
            SYS_futex as futex, SYS_getpgid as getpgid, SYS_getpid as getpid,
            SYS_getsockopt as getsockopt, SYS_gettid as gettid, SYS_getuid as getuid,
            SYS_ioctl as ioctl, SYS_kill as kill, SYS_madvise as madvise, SYS_mmap as mmap,
            SYS_mprotect as mprotect, SYS_mremap as mremap, SYS_munlock as munlock,
            SYS_munmap as munmap, SYS_pidfd_open as pidfd_open,
            SYS_pidfd_send_signal as pidfd_send_signal, SYS_ppoll as ppoll, SYS_read as read,
            SYS_recvfrom as recvfrom, SYS_recvmsg as recvmsg,
            SYS_restart_syscall as restart_syscall, SYS_rt_sigaction as rt_sigaction,
            SYS_rt_sigprocmask as rt_sigprocmask, SYS_rt_sigreturn as rt_sigreturn,
            SYS_sendto as sendto, SYS_setsockopt as setsockopt, SYS_sigaltstack as sigaltstack,
            SYS_tgkill as tgkill, SYS_tkill as tkill, SYS_unlinkat as unlinkat, SYS_wait4 as wait4,
            SYS_waitid as waitid, SYS_write as write,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_architectures_allowlists_are_reviewed_snapshots() {
        insta::assert_snapshot!("allowlist_x86_64", describe_for(Arch::X86_64));
        insta::assert_snapshot!("allowlist_aarch64", describe_for(Arch::Aarch64));
    }

    #[test]
    fn the_allowlists_never_allow_what_the_filter_exists_to_deny() {
        let denied = [
            "execve",
            "execveat",
            "open",
            "openat",
            "connect",
            "socket",
            "ptrace",
            "fork",
            "clone",
            "clone3",
            "prctl",
            "process_vm_readv",
            "bind",
            "setuid",
            "mlock",
        ];
        for arch in [Arch::X86_64, Arch::Aarch64] {
            for allowed in allowlist(arch) {
                assert!(
                    !denied.contains(&allowed.name),
                    "{arch} allows {}",
                    allowed.name
                );
            }
        }
    }

    #[test]
    fn aarch64_lists_only_calls_that_exist_there() {
        let absent_on_aarch64 = ["open", "poll", "unlink", "rmdir", "fork", "access"];
        for allowed in allowlist(Arch::Aarch64) {
            assert!(
                !absent_on_aarch64.contains(&allowed.name),
                "{}",
                allowed.name
            );
        }
    }

    #[test]
    fn docs_list_every_allowed_syscall_with_its_reason() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/seccomp.md"
        ))
        .expect("docs/seccomp.md");
        for arch in [Arch::X86_64, Arch::Aarch64] {
            for line in describe_for(arch).lines() {
                assert!(
                    doc.contains(line.trim_end()),
                    "docs/seccomp.md lacks: {line}"
                );
            }
        }
    }
}

/// The live filter, installed in forked children: the same code path and the
/// same BPF bytes as the daemon's `seal()`.
#[cfg(all(test, feature = "seccomp", target_os = "linux"))]
mod live_filter_tests {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};

    use super::{filter, host_arch};

    /// Forks a child that installs the daemon's filter and then runs `attempt`;
    /// returns how the child ended.
    fn under_the_filter(attempt: fn()) -> WaitStatus {
        let program = filter::compile(host_arch().expect("supported arch")).expect("filter");
        // SAFETY: the child only installs the already-compiled filter and makes
        // raw system calls before `_exit`; it allocates nothing.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                if seccompiler::apply_filter_all_threads(&program).is_err() {
                    crate::sys::exit_now(100);
                }
                attempt();
                crate::sys::exit_now(0)
            }
            ForkResult::Parent { child } => waitpid(child, None).expect("waitpid"),
        }
    }

    fn killed_by(status: WaitStatus) -> Option<Signal> {
        match status {
            WaitStatus::Signaled(_, signal, _) => Some(signal),
            _ => None,
        }
    }

    #[test]
    fn denied_syscalls_kill_the_process_with_sigsys() {
        let attempts: [(&str, fn()); 5] = [
            ("execve", || {
                raw_syscall(libc::SYS_execve, [c"/bin/true".as_ptr() as usize, 0, 0])
            }),
            ("openat", || {
                raw_syscall(
                    libc::SYS_openat,
                    [libc::AT_FDCWD as usize, c"/etc/passwd".as_ptr() as usize, 0],
                )
            }),
            ("connect", || {
                raw_syscall(libc::SYS_connect, [usize::MAX, 0, 0])
            }),
            ("socket", || {
                raw_syscall(
                    libc::SYS_socket,
                    [libc::AF_INET as usize, libc::SOCK_STREAM as usize, 0],
                )
            }),
            ("ptrace", || {
                raw_syscall(libc::SYS_ptrace, [libc::PTRACE_TRACEME as usize, 0, 0])
            }),
        ];
        for (name, attempt) in attempts {
            let status = under_the_filter(attempt);
            assert_eq!(
                killed_by(status),
                Some(Signal::SIGSYS),
                "{name}: {status:?}"
            );
        }
    }

    /// A raw syscall the filter is expected to stop at entry.
    fn raw_syscall(number: libc::c_long, args: [usize; 3]) {
        // SAFETY: every pointer passed here is null or a static C string, and
        // the filter kills the process at syscall entry anyway.
        unsafe {
            libc::syscall(number, args[0], args[1], args[2]);
        }
    }

    #[test]
    fn kill_with_another_signal_than_sigkill_is_denied() {
        let status = under_the_filter(|| {
            let me = std::process::id() as usize;
            raw_syscall(libc::SYS_kill, [me, libc::SIGTERM as usize, 0]);
        });
        assert_eq!(killed_by(status), Some(Signal::SIGSYS), "{status:?}");
    }

    /// `kill(-1, …)` would signal every process of the user, `kill(0, …)` the
    /// daemon's own group. Signal 0 keeps the test harmless should the filter
    /// let one through. The raw forms carry the value in the low 32 bits
    /// only, as the kernel reads a `pid_t`, so a 64-bit compare would miss them.
    #[test]
    fn kill_of_every_process_or_of_its_own_group_is_denied_however_it_is_encoded() {
        let attempts: [(&str, fn()); 4] = [
            ("kill(-1, 0)", || {
                // SAFETY: kill takes no pointers; the filter stops it at entry.
                unsafe { libc::kill(-1, 0) };
            }),
            ("kill(0, 0)", || {
                // SAFETY: as above.
                unsafe { libc::kill(0, 0) };
            }),
            ("kill(0xffffffff, 0)", || {
                raw_syscall(libc::SYS_kill, [0xffff_ffff, 0, 0])
            }),
            ("kill(1 << 32, 0)", || {
                raw_syscall(libc::SYS_kill, [1 << 32, 0, 0])
            }),
        ];
        for (call, attempt) in attempts {
            let status = under_the_filter(attempt);
            assert_eq!(
                killed_by(status),
                Some(Signal::SIGSYS),
                "{call}: {status:?}"
            );
        }
    }

    /// The targets the daemon uses pass: a pid (the panic's own SIGKILL, the
    /// check of a pid to register) and a negated process group (the panic's
    /// SIGKILL of the supervised tree).
    #[test]
    fn kill_of_one_process_or_of_another_group_passes() {
        let status = under_the_filter(|| {
            // SAFETY: kill and getpgid take no pointers; signal 0 only checks.
            unsafe {
                libc::kill(libc::getpid(), 0);
                libc::kill(-libc::getpgid(0), 0);
            }
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().expect("pid"), 0));
    }

    #[test]
    fn executable_memory_is_denied() {
        let status = under_the_filter(|| {
            // SAFETY: an anonymous mapping request with no pointers; the filter
            // stops it at entry.
            unsafe {
                libc::syscall(
                    libc::SYS_mmap,
                    0,
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
            }
        });
        assert_eq!(killed_by(status), Some(Signal::SIGSYS), "{status:?}");
    }

    #[test]
    fn abort_ends_in_sigabrt_not_sigsys() {
        let status = under_the_filter(|| std::process::abort());
        assert_eq!(killed_by(status), Some(Signal::SIGABRT), "{status:?}");
    }

    #[test]
    fn the_loops_own_calls_pass_the_filter() {
        let status = under_the_filter(|| {
            // SAFETY: calls with no or null pointers and zero lengths: a poll of
            // nothing, an empty write, a read of a closed fd, a liveness check.
            unsafe {
                libc::poll(std::ptr::null_mut(), 0, 0);
                libc::write(2, std::ptr::null(), 0);
                libc::read(-1, std::ptr::null_mut(), 0);
                libc::kill(libc::getpid(), 0);
                libc::getuid();
            }
        });
        assert_eq!(status, WaitStatus::Exited(status.pid().expect("pid"), 0));
    }
}
