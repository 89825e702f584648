//! Reading a process from the outside: its mappings (`/proc/PID/smaps`) and
//! its memory (`/proc/PID/mem`), and where a canary lies in it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

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

/// Where a canary was found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hit {
    /// Its address.
    pub address: u64,
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

/// Reads every readable mapping of `pid` through `/proc/PID/mem` and finds `canary`.
pub fn scan_memory(pid: i32, canary: &[u8]) -> io::Result<Scan> {
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
                for offset in find_all(&bytes, canary) {
                    scan.hits.push(Hit {
                        address: mapping.start + offset as u64,
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
