//! The observer's ptrace work on a live process: stop it at a chosen
//! syscall entry, or rewrite the syscall it is entering.
//!
//! x86_64 rewrites the number in `orig_rax`; aarch64 has no such register
//! and takes it through the `NT_ARM_SYSTEM_CALL` register set.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// `PTRACE_GET_SYSCALL_INFO` from the kernel's `ptrace.h` (the libc crate
/// defines it for glibc targets only; the guest programs are built for musl).
const PTRACE_GET_SYSCALL_INFO: u32 = 0x420e;

/// `PTRACE_SYSCALL_INFO_ENTRY`: the stop is at a syscall's entry.
const SYSCALL_INFO_ENTRY: u8 = 1;

/// The leading part of the kernel's `struct ptrace_syscall_info` (the
/// entry variant), which is all the observer reads.
#[repr(C)]
#[derive(Default)]
struct SyscallInfo {
    op: u8,
    reserved: u8,
    flags: u16,
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    nr: u64,
    args: [u64; 6],
    // Room for the larger seccomp variant, so the kernel never truncates.
    spare: [u64; 2],
}

/// A syscall entry the tracee stopped at.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The syscall number.
    pub nr: u64,
    /// Its first arguments.
    pub args: [u64; 6],
}

/// How a traced process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Killed by this signal.
    Signaled(Signal),
    /// Exited with this code.
    Exited(i32),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Signaled(signal) => write!(f, "killed by {signal} ({})", *signal as i32),
            End::Exited(code) => write!(f, "exited with {code}"),
        }
    }
}

/// A process held under ptrace by this observer.
pub struct Traced {
    pid: Pid,
}

impl Traced {
    /// Seizes `pid` (no stop, no signal sent) with syscall stops marked.
    pub fn seize(pid: i32) -> Result<Self> {
        let pid = Pid::from_raw(pid);
        ptrace::seize(pid, ptrace::Options::PTRACE_O_TRACESYSGOOD)
            .with_context(|| format!("PTRACE_SEIZE of pid {pid}"))?;
        Ok(Self { pid })
    }

    /// Stops the tracee where it is (in its blocking `poll`, usually).
    pub fn interrupt(&self) -> Result<()> {
        ptrace::interrupt(self.pid).context("PTRACE_INTERRUPT")?;
        match waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::__WALL))? {
            WaitStatus::PtraceEvent(..) | WaitStatus::Stopped(..) => Ok(()),
            other => bail!("the tracee did not stop on PTRACE_INTERRUPT: {other:?}"),
        }
    }

    /// Resumes until the next syscall entry that `wanted` accepts, within
    /// `patience`; `nudge` runs once after the first resume (e.g. a signal
    /// that wakes the tracee). Returns `Err` with the end if the tracee died.
    pub fn run_to_entry(
        &self,
        patience: Duration,
        mut nudge: impl FnMut(),
        mut wanted: impl FnMut(&Entry) -> bool,
    ) -> Result<std::result::Result<Entry, End>> {
        let started = Instant::now();
        let mut nudged = false;
        let mut pending: Option<Signal> = None;
        loop {
            ptrace::syscall(self.pid, pending.take()).context("PTRACE_SYSCALL")?;
            if !nudged {
                nudge();
                nudged = true;
            }
            match waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::__WALL))? {
                WaitStatus::PtraceSyscall(_) => {
                    if let Some(entry) = self.entry()? {
                        if wanted(&entry) {
                            return Ok(Ok(entry));
                        }
                    }
                }
                WaitStatus::Signaled(_, signal, _) => return Ok(Err(End::Signaled(signal))),
                WaitStatus::Exited(_, code) => return Ok(Err(End::Exited(code))),
                // A signal on its way to the tracee: deliver it unchanged.
                WaitStatus::Stopped(_, signal) => pending = Some(signal),
                _ => {}
            }
            if started.elapsed() > patience {
                bail!("no matching syscall entry within {patience:?}");
            }
        }
    }

    /// At a syscall-entry stop: replaces the syscall about to run with `nr`.
    #[cfg(target_arch = "x86_64")]
    pub fn rewrite_syscall(&self, nr: u64) -> Result<()> {
        let mut regs = ptrace::getregs(self.pid).context("PTRACE_GETREGS")?;
        regs.orig_rax = nr;
        ptrace::setregs(self.pid, regs).context("PTRACE_SETREGS")?;
        Ok(())
    }

    /// At a syscall-entry stop: replaces the syscall about to run with `nr`.
    #[cfg(target_arch = "aarch64")]
    pub fn rewrite_syscall(&self, nr: u64) -> Result<()> {
        /// `NT_ARM_SYSTEM_CALL` from the kernel's `elf.h`: the syscall
        /// number register set of an arm64 tracee.
        const NT_ARM_SYSTEM_CALL: libc::c_int = 0x404;
        let mut number = nr as libc::c_int;
        let mut iov = libc::iovec {
            iov_base: (&mut number as *mut libc::c_int).cast(),
            iov_len: std::mem::size_of::<libc::c_int>(),
        };
        // SAFETY: `iov` points at a live c_int of the size the kernel
        // expects for this register set; the kernel only reads it.
        let done = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGSET,
                self.pid.as_raw(),
                NT_ARM_SYSTEM_CALL,
                &mut iov as *mut libc::iovec,
            )
        };
        if done < 0 {
            return Err(Errno::last()).context("PTRACE_SETREGSET NT_ARM_SYSTEM_CALL");
        }
        Ok(())
    }

    /// Lets the tracee go on untraced.
    pub fn detach(&self) -> Result<()> {
        ptrace::detach(self.pid, None).context("PTRACE_DETACH")
    }

    /// Lets the tracee run on (no more stops) and waits for its end.
    pub fn continue_to_end(&self) -> Result<End> {
        ptrace::syscall(self.pid, None).context("PTRACE_SYSCALL")?;
        let mut pending: Option<Signal> = None;
        loop {
            match waitpid(self.pid, Some(nix::sys::wait::WaitPidFlag::__WALL))? {
                WaitStatus::Signaled(_, signal, _) => return Ok(End::Signaled(signal)),
                WaitStatus::Exited(_, code) => return Ok(End::Exited(code)),
                WaitStatus::Stopped(_, signal) => pending = Some(signal),
                _ => {}
            }
            match ptrace::syscall(self.pid, pending.take()) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => return Err(e).context("PTRACE_SYSCALL"),
            }
        }
    }

    /// The syscall entry the tracee is stopped at, if it is one.
    fn entry(&self) -> Result<Option<Entry>> {
        let mut info = SyscallInfo::default();
        // SAFETY: the kernel writes at most the given size into `info`, a
        // plain-old-data struct sized for the entry and seccomp variants.
        let written = unsafe {
            libc::ptrace(
                PTRACE_GET_SYSCALL_INFO as _,
                self.pid.as_raw(),
                std::mem::size_of::<SyscallInfo>(),
                &mut info as *mut SyscallInfo,
            )
        };
        if written < 0 {
            return Err(Errno::last()).context("PTRACE_GET_SYSCALL_INFO");
        }
        Ok((info.op == SYSCALL_INFO_ENTRY).then_some(Entry {
            nr: info.nr,
            args: info.args,
        }))
    }
}

/// The numbers, on this architecture, of the syscalls the confinement row
/// rewrites a live daemon's into: the ones its filter denies, and `getpid`,
/// which it allows (the control: that rewrite must leave the daemon alive).
pub fn syscall_number(name: &str) -> Option<u64> {
    let nr = match name {
        "getpid" => libc::SYS_getpid,
        "execve" => libc::SYS_execve,
        "openat" => libc::SYS_openat,
        "connect" => libc::SYS_connect,
        "ptrace" => libc::SYS_ptrace,
        "socket" => libc::SYS_socket,
        _ => return None,
    };
    Some(nr as u64)
}
