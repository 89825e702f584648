//! Reading a process from the outside: its mappings (`/proc/PID/smaps`) and
//! its memory (`/proc/PID/mem`), and where a canary lies in it: whole, in
//! part, or encoded.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};

/// The fixed start of every lab canary; what follows it is random.
pub const CANARY_PREFIX: &str = "LAB-CANARY-";

/// A lab canary from 24 random bytes: the prefix, then 32 base64url characters.
pub fn canary_from(random: &[u8; 24]) -> Vec<u8> {
    format!("{CANARY_PREFIX}{}", URL_SAFE_NO_PAD.encode(random)).into_bytes()
}

/// The shortest piece of a canary's random part a scan reports: 8 base64url
/// characters, 48 random bits, which no unrelated memory holds by chance.
pub const FRAGMENT: usize = 8;

/// What a scan looks for: every [`FRAGMENT`]-byte window of the canary's
/// random part (so a partial wipe, or a copy whose head the allocator
/// overwrote, is found), and the canary's hex and base64 forms.
pub struct Traces {
    windows: HashSet<[u8; FRAGMENT]>,
    /// The windows' first two bytes: most offsets are ruled out by this alone.
    starts: Vec<bool>,
    encoded: Vec<(&'static str, Vec<u8>)>,
}

/// One trace of a canary in a run of bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// Where it starts.
    pub offset: usize,
    /// How many bytes it spans (a whole raw canary: its length).
    pub length: usize,
    /// `raw` (the canary or a piece of it), `hex`, `base64` or `base64url`.
    pub form: &'static str,
}

impl Traces {
    /// The traces of `canary` (a lab canary, or any secret of 8 bytes or more).
    pub fn of(canary: &[u8]) -> Self {
        let random = canary
            .strip_prefix(CANARY_PREFIX.as_bytes())
            .unwrap_or(canary);
        let windows: HashSet<[u8; FRAGMENT]> = random
            .windows(FRAGMENT)
            .filter_map(|window| window.try_into().ok())
            .collect();
        let mut starts = vec![false; 1 << 16];
        for window in &windows {
            starts[usize::from(u16::from_le_bytes([window[0], window[1]]))] = true;
        }
        let hex: String = canary.iter().map(|b| format!("{b:02x}")).collect();
        let encoded = vec![
            ("hex", hex.into_bytes()),
            ("base64", STANDARD.encode(canary).into_bytes()),
            ("base64url", URL_SAFE_NO_PAD.encode(canary).into_bytes()),
        ];
        Self {
            windows,
            starts,
            encoded,
        }
    }

    /// Every trace in `bytes`; overlapping raw pieces merge into one.
    pub fn find(&self, bytes: &[u8]) -> Vec<Trace> {
        let mut traces = Vec::new();
        let mut run: Option<(usize, usize)> = None;
        for at in 0..bytes.len().saturating_sub(FRAGMENT - 1) {
            let start = usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
            if !self.starts[start] {
                continue;
            }
            let Ok(window) = <[u8; FRAGMENT]>::try_from(&bytes[at..at + FRAGMENT]) else {
                continue;
            };
            if !self.windows.contains(&window) {
                continue;
            }
            run = match run {
                Some((first, end)) if at <= end => Some((first, at + FRAGMENT)),
                Some((first, end)) => {
                    traces.push(raw_trace(first, end));
                    Some((at, at + FRAGMENT))
                }
                None => Some((at, at + FRAGMENT)),
            };
        }
        if let Some((first, end)) = run {
            traces.push(raw_trace(first, end));
        }
        for (form, needle) in &self.encoded {
            traces.extend(find_all(bytes, needle).into_iter().map(|offset| Trace {
                offset,
                length: needle.len(),
                form,
            }));
        }
        traces
    }
}

/// A run of raw pieces; a whole canary's run starts at its prefix.
fn raw_trace(first: usize, end: usize) -> Trace {
    Trace {
        offset: first,
        length: end - first,
        form: "raw",
    }
}

/// One mapping of `/proc/PID/smaps`, with the fields the lab judges by.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rw-p` and the like.
    pub perms: String,
    /// The backing file or `[heap]`, `[stack]`, empty for anonymous memory.
    pub path: String,
    /// `Size:` in KiB.
    pub size_kib: u64,
    /// `Locked:` in KiB.
    pub locked_kib: u64,
    /// `Swap:` in KiB.
    pub swap_kib: u64,
    /// `VmFlags:` as two-letter codes (`lo` locked, `dd` do not dump, …).
    pub vm_flags: Vec<String>,
}

impl Mapping {
    /// Whether the kernel may read it for us (`r` permission).
    pub fn is_readable(&self) -> bool {
        self.perms.starts_with('r')
    }

    /// Whether the mapping carries VmFlag `flag`.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.vm_flags.iter().any(|f| f == flag)
    }

    /// Locked in RAM all of it: VmFlags `lo` and `Locked` = `Size`.
    pub fn is_fully_locked(&self) -> bool {
        self.has_flag("lo") && self.locked_kib == self.size_kib
    }

    /// A `memfd_secret` mapping. Its pages are unevictable by construction
    /// whether or not the kernel shows them as locked: 6.18 does (`lo`),
    /// Debian's 6.1 does not (measured in the lab's VMs).
    pub fn is_secretmem(&self) -> bool {
        self.path.starts_with("/secretmem")
    }

    /// The shape of a `SecretBuffer`'s data pages: never swapped (locked,
    /// or secret memory) and left out of dumps.
    pub fn is_secret_shaped(&self) -> bool {
        (self.is_fully_locked() || self.is_secretmem()) && self.has_flag("dd")
    }

    /// One line for evidence: `7f..-7f.. rw-p [anon] 4 KiB lo dd Locked 4 KiB Swap 0 KiB`.
    pub fn describe(&self) -> String {
        format!(
            "{:x}-{:x} {} {} Size {} KiB Locked {} KiB Swap {} KiB VmFlags {}",
            self.start,
            self.end,
            self.perms,
            if self.path.is_empty() {
                "[anon]"
            } else {
                &self.path
            },
            self.size_kib,
            self.locked_kib,
            self.swap_kib,
            self.vm_flags.join(" ")
        )
    }
}

/// Parses the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            else {
                continue;
            };
            let perms = fields.next().unwrap_or_default().to_owned();
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            mappings.push(Mapping {
                start,
                end,
                perms,
                path,
                ..Mapping::default()
            });
            continue;
        }
        let Some(current) = mappings.last_mut() else {
            continue;
        };
        let kib = || {
            fields
                .clone()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" => current.size_kib = kib(),
            "Locked:" => current.locked_kib = kib(),
            "Swap:" => current.swap_kib = kib(),
            "VmFlags:" => current.vm_flags = fields.map(str::to_owned).collect(),
            _ => {}
        }
    }
    mappings
}

/// The mappings of `pid`.
pub fn mappings(pid: i32) -> io::Result<Vec<Mapping>> {
    Ok(parse_smaps(&std::fs::read_to_string(format!(
        "/proc/{pid}/smaps"
    ))?))
}

/// Where a trace of a canary was found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hit {
    /// Its address.
    pub address: u64,
    /// How many bytes of the canary's random part (or of an encoded form) it spans.
    pub length: usize,
    /// `raw`, `hex`, `base64` or `base64url` (see [`Traces`]).
    pub form: String,
    /// The mapping it lies in.
    pub mapping: Mapping,
}

/// The outcome of reading every readable mapping of a process.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scan {
    /// Every place the canary was found.
    pub hits: Vec<Hit>,
    /// Readable mappings read.
    pub mappings_read: usize,
    /// Bytes read.
    pub bytes_read: u64,
    /// Mappings that could not be read, with the error (e.g. `[vvar]`: EIO).
    pub unreadable: Vec<String>,
}

/// Reads every readable mapping of `pid` through `/proc/PID/mem` and finds
/// every trace of `canary` (whole, in pieces, encoded).
pub fn scan_memory(pid: i32, canary: &[u8]) -> io::Result<Scan> {
    let traces = Traces::of(canary);
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let mut scan = Scan::default();
    for mapping in mappings(pid)? {
        if !mapping.is_readable() || mapping.path == "[vsyscall]" {
            continue;
        }
        match read_range(&mem, mapping.start, mapping.end) {
            Ok(bytes) => {
                scan.mappings_read += 1;
                scan.bytes_read += bytes.len() as u64;
                for trace in traces.find(&bytes) {
                    scan.hits.push(Hit {
                        address: mapping.start + trace.offset as u64,
                        length: trace.length,
                        form: trace.form.to_owned(),
                        mapping: mapping.clone(),
                    });
                }
            }
            Err(e) => scan
                .unreadable
                .push(format!("{} ({e})", mapping.describe())),
        }
    }
    Ok(scan)
}

/// A range that held a trace of the canary while the process was alive, as
/// found again at its end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldRange {
    /// Its address.
    pub address: u64,
    /// Its length.
    pub length: usize,
    /// Whether a mapping still covers it.
    pub mapped: bool,
    /// Whether reading it through `/proc/PID/mem` succeeded.
    pub read: bool,
    /// Whether every byte of it is zero.
    pub zeroed: bool,
    /// Where it was looked at: `the end` (the last system call) or `munmap`
    /// (the entry of the call that unmapped it, the last moment it could be read).
    pub at: String,
}

/// Looks again at `ranges` (address, length) of `pid`: a wipe must leave
/// each mapped, readable and all zeros, not unmapped or unreadable.
pub fn recheck(pid: i32, ranges: &[(u64, usize)]) -> io::Result<Vec<HeldRange>> {
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let maps = mappings(pid)?;
    Ok(ranges
        .iter()
        .map(|&(address, length)| {
            let end = address + length as u64;
            let mapped = maps.iter().any(|m| m.start <= address && end <= m.end);
            let bytes = read_range(&mem, address, end).ok();
            HeldRange {
                address,
                length,
                mapped,
                read: bytes.is_some(),
                zeroed: bytes.is_some_and(|b| b.iter().all(|&byte| byte == 0)),
                at: "the end".into(),
            }
        })
        .collect())
}

/// Reads `[start, end)` of a process's memory; a range that fails part way
/// (a guard page) is an error, as is a short read.
fn read_range(mem: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; (end - start) as usize];
    mem.read_exact_at(&mut bytes, start)?;
    Ok(bytes)
}

/// Every offset where `needle` starts in `haystack`.
pub fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return Vec::new();
    }
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect()
}

/// Asks the kernel to page out every writable private mapping of `pid` now
/// (`process_madvise(2)`, `MADV_PAGEOUT`; needs `CAP_SYS_NICE` and ptrace
/// rights): pressure on that process's own pages, not a neighbour's. Locked
/// pages stay. Returns the bytes the kernel took the advice for.
pub fn page_out(pid: i32) -> io::Result<usize> {
    let pidfd = goodnight::pidfd::pidfd_open(nix::unistd::Pid::from_raw(pid))?;
    let ranges: Vec<libc::iovec> = mappings(pid)?
        .iter()
        .filter(|m| m.perms.starts_with("rw") && m.perms.ends_with('p'))
        .map(|m| libc::iovec {
            iov_base: m.start as *mut libc::c_void,
            iov_len: (m.end - m.start) as usize,
        })
        .collect();
    let mut advised = 0;
    // The kernel stops at the first range it refuses; advise one at a time
    // so a refused range (a stack guard) does not hide the others.
    for range in &ranges {
        // SAFETY: `range` points at one iovec that lives for the call; the
        // kernel only reads it, and the addresses are the target's, not ours.
        let done = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                std::os::fd::AsRawFd::as_raw_fd(&pidfd),
                range as *const libc::iovec,
                1usize,
                libc::MADV_PAGEOUT,
                0u32,
            )
        };
        if done > 0 {
            advised += done as usize;
        }
    }
    Ok(advised)
}

/// `Seccomp:` of every thread of `pid` (Firecracker's rule: check them all).
pub fn seccomp_modes(pid: i32) -> io::Result<Vec<(i32, String)>> {
    let mut modes = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = entry?.file_name().to_string_lossy().parse().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))?;
        let mode = status_field(&status, "Seccomp").unwrap_or_default();
        modes.push((tid, mode));
    }
    Ok(modes)
}

/// A field of a `/proc/PID/status` text.
pub fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &[u8] = b"LAB-CANARY-q3Jx_0bW9fKZ2LmN7pRt4vYs8aCe1dGh";

    #[test]
    fn a_whole_canary_is_one_raw_trace_and_half_of_one_is_still_found() {
        let traces = Traces::of(CANARY);
        let mut memory = vec![0u8; 100];
        memory.extend_from_slice(CANARY);
        memory.extend_from_slice(&[0u8; 50]);
        let found = traces.find(&memory);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].offset, 100 + CANARY_PREFIX.len());
        assert_eq!(found[0].length, CANARY.len() - CANARY_PREFIX.len());

        // A wipe that stopped half-way: the tail is a trace.
        let tail = &CANARY[CANARY.len() - 12..];
        let mut wiped_half = vec![0u8; 64];
        wiped_half.extend_from_slice(tail);
        let found = traces.find(&wiped_half);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].offset, found[0].length), (64, 12));

        // Seven bytes are below the fragment: not a trace.
        assert!(traces.find(&CANARY[CANARY.len() - 7..]).is_empty());
        // The fixed prefix alone is no trace either.
        assert!(traces.find(CANARY_PREFIX.as_bytes()).is_empty());
    }

    #[test]
    fn the_hex_and_base64_forms_are_traces() {
        let traces = Traces::of(CANARY);
        let hex: String = CANARY.iter().map(|b| format!("{b:02x}")).collect();
        for (form, text) in [
            ("hex", hex),
            ("base64", STANDARD.encode(CANARY)),
            ("base64url", URL_SAFE_NO_PAD.encode(CANARY)),
        ] {
            let mut memory = b"xx".to_vec();
            memory.extend_from_slice(text.as_bytes());
            let found = traces.find(&memory);
            assert!(
                found.iter().any(|t| t.form == form && t.offset == 2),
                "{form}: {found:?}"
            );
        }
    }

    const SMAPS: &str = "\
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
Size:                  4 kB
Locked:                4 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me lo dd ac sd 
7f0000002000-7f0000003000 r--p 00000000 08:01 42                         /usr/bin/dazai
Size:                  4 kB
Locked:                0 kB
Swap:                  0 kB
VmFlags: rd mr mw me sd 
";

    #[test]
    fn smaps_are_parsed_with_flags_and_sizes() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 2);
        assert!(maps[0].is_secret_shaped());
        assert_eq!(maps[0].path, "");
        assert_eq!(maps[1].path, "/usr/bin/dazai");
        assert!(!maps[1].is_fully_locked());
    }

    #[test]
    fn a_secretmem_mapping_is_secret_shaped_without_lo_but_plain_memory_is_not() {
        let maps = parse_smaps(
            "\
ffff83709000-ffff83719000 rw-s 00000000 00:01 2                          /secretmem (deleted)
Size:                 64 kB
Locked:                0 kB
Swap:                  0 kB
VmFlags: rd wr sh mr mw ms dc dd 
7f0000004000-7f0000005000 rw-p 00000000 00:00 0 
Size:                  4 kB
Locked:                0 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me dd 
",
        );
        assert!(maps[0].is_secret_shaped(), "{}", maps[0].describe());
        assert!(!maps[1].is_secret_shaped(), "{}", maps[1].describe());
    }

    #[test]
    fn every_occurrence_is_found() {
        assert_eq!(find_all(b"xxabcxabc", b"abc"), vec![2, 6]);
        assert!(find_all(b"ab", b"abc").is_empty());
    }
}
