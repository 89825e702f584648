//! The initramfs the lab composes around `lab-init`: an uncompressed newc
//! cpio archive, written here so that the same entries give the same bytes
//! and what the kernel's unpacker would skip silently is refused instead.

use std::collections::HashSet;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};

/// One entry of an initramfs.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A directory; it must come before anything inside it.
    Dir {
        /// Path inside the initramfs, relative or starting with `/`.
        path: String,
        /// Permission bits only (e.g. `0o755`): the type is added here.
        mode: u32,
    },
    /// A regular file with the contents of a host file.
    File {
        /// Path inside the initramfs; its parent must be an earlier [`Entry::Dir`].
        path: String,
        /// The host file, read when the archive is written.
        source: PathBuf,
        /// Permission bits only (e.g. `0o755`).
        mode: u32,
    },
    /// A symbolic link (mode `0o777`, as links always are).
    Symlink {
        /// Path of the link; its parent must be an earlier [`Entry::Dir`].
        path: String,
        /// What the link points to, stored verbatim.
        target: String,
    },
}

/// Writes an uncompressed newc cpio archive of `entries` to `out`, the
/// format the kernel unpacks as an initramfs. Uncompressed, because with
/// Python's standard library in it a TCG guest spent seconds of every boot
/// in gunzip.
///
/// Owners are root and mtimes 0, so the same entries give the same bytes.
/// Paths are checked (no empty, `.` or `..` components, no duplicates, parents
/// first), because the kernel's unpacker skips what it cannot place silently.
pub fn write_initramfs(out: &Path, entries: &[Entry]) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("create {}", out.display()))?;
    let mut archive = BufWriter::new(file);
    write_newc(&mut archive, entries).with_context(|| format!("write {}", out.display()))?;
    archive
        .flush()
        .with_context(|| format!("finish {}", out.display()))
}

/// The uncompressed newc archive of `entries`, trailer included.
fn write_newc(out: &mut impl Write, entries: &[Entry]) -> Result<()> {
    const S_IFDIR: u32 = 0o040_000;
    const S_IFREG: u32 = 0o100_000;
    const S_IFLNK: u32 = 0o120_000;
    let mut seen = HashSet::new();
    let mut dirs = HashSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let (path, mode, data) = match entry {
            Entry::Dir { path, mode } => (path, *mode, None),
            Entry::File { path, source, mode } => {
                let data = fs::read(source)
                    .with_context(|| format!("read {} for {path}", source.display()))?;
                (path, *mode, Some(data))
            }
            Entry::Symlink { path, target } => (path, 0o777, Some(target.clone().into_bytes())),
        };
        let name = path.trim_start_matches('/');
        ensure!(
            !name.is_empty()
                && name
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != ".."),
            "initramfs path {path:?} is not a plain path"
        );
        ensure!(
            mode <= 0o7777,
            "{path}: mode {mode:o} is more than permission bits"
        );
        if let Some((parent, _)) = name.rsplit_once('/') {
            ensure!(
                dirs.contains(parent),
                "{path}: its directory /{parent} must be an earlier entry"
            );
        }
        ensure!(seen.insert(name), "{path}: listed twice");
        let (kind, nlink) = match entry {
            Entry::Dir { .. } => {
                dirs.insert(name);
                (S_IFDIR, 2)
            }
            Entry::File { .. } => (S_IFREG, 1),
            Entry::Symlink { .. } => (S_IFLNK, 1),
        };
        let data = data.unwrap_or_default();
        let ino = u32::try_from(index + 1).context("too many entries")?;
        newc_record(out, ino, kind | mode, nlink, name, &data)?;
    }
    newc_record(out, 0, 0, 1, "TRAILER!!!", &[])
}

/// One newc record: the 110-byte ASCII header, the NUL-terminated name and the
/// data, each padded to 4 bytes.
fn newc_record(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
) -> Result<()> {
    let size = u32::try_from(data.len()).with_context(|| format!("{name}: over 4 GiB"))?;
    let name_size = u32::try_from(name.len() + 1).context("name too long")?;
    let (uid, gid, mtime, dev, check) = (0u32, 0u32, 0u32, 0u32, 0u32);
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {dev:08x}{dev:08x}{dev:08x}{dev:08x}{name_size:08x}{check:08x}"
    );
    let padding = |len: usize| &[0u8; 3][..(4 - len % 4) % 4];
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(padding(header.len() + name.len() + 1))?;
    out.write_all(data)?;
    out.write_all(padding(data.len()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One record read back: name, mode, data.
    type Record = (String, u32, Vec<u8>);

    /// A reader independent of the writer: parses by the newc layout, checks
    /// magic, NUL, padding and that the trailer ends the archive.
    fn read_initramfs(path: &Path) -> Vec<Record> {
        let bytes = fs::read(path).unwrap();
        let align = |at: usize| at.div_ceil(4) * 4;
        let mut records = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (mode, size, name_size) = (field(1), field(6) as usize, field(11) as usize);
            let name = &bytes[at + 110..at + 110 + name_size];
            assert_eq!(name.last(), Some(&0), "name is NUL-terminated");
            let name = String::from_utf8(name[..name_size - 1].to_vec()).unwrap();
            let data_at = align(at + 110 + name_size);
            assert!(bytes[at + 110 + name_size..data_at].iter().all(|&b| b == 0));
            let data = bytes[data_at..data_at + size].to_vec();
            at = align(data_at + size);
            if name == "TRAILER!!!" {
                assert_eq!(at, bytes.len(), "the trailer ends the archive");
                return records;
            }
            records.push((name, mode, data));
        }
    }

    #[test]
    fn initramfs_round_trips_dirs_files_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("busybox");
        // 5 bytes: the data needs padding, so alignment is exercised.
        fs::write(&source, b"hello").unwrap();
        let out = dir.path().join("initrd.cpio");
        let entries = [
            Entry::Dir {
                path: "/bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "/bin/busybox".into(),
                source,
                mode: 0o755,
            },
            Entry::Symlink {
                path: "/bin/sh".into(),
                target: "busybox".into(),
            },
            Entry::Dir {
                path: "/bin/sub".into(),
                mode: 0o700,
            },
        ];
        write_initramfs(&out, &entries).unwrap();
        let records = read_initramfs(&out);
        assert_eq!(
            records,
            [
                ("bin".to_owned(), 0o040_755, Vec::new()),
                ("bin/busybox".to_owned(), 0o100_755, b"hello".to_vec()),
                ("bin/sh".to_owned(), 0o120_777, b"busybox".to_vec()),
                ("bin/sub".to_owned(), 0o040_700, Vec::new()),
            ]
        );
    }

    #[test]
    fn initramfs_refuses_what_the_kernel_would_drop() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("initrd.cpio");
        let link = |path: &str| Entry::Symlink {
            path: path.into(),
            target: "x".into(),
        };
        let bin = Entry::Dir {
            path: "/bin".into(),
            mode: 0o755,
        };
        let refused = [
            vec![link("/bin/sh")],
            vec![bin.clone(), bin.clone()],
            vec![link("/bin"), link("/bin/sh")],
            vec![bin.clone(), link("/bin/../sh")],
            vec![link("/")],
            vec![Entry::Dir {
                path: "/tmp".into(),
                mode: 0o041_777,
            }],
        ];
        for entries in refused {
            assert!(write_initramfs(&out, &entries).is_err(), "{entries:?}");
        }
        write_initramfs(&out, &[bin, link("/bin/sh")]).unwrap();
    }
}
