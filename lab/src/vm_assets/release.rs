//! The Debian releases whose kernels the VM legs boot: bookworm's 6.1, which
//! offers `memfd_secret`; bullseye's 5.10, which predates it — the kernel on
//! which the daemon must fall back to the locked backend; and trixie's 6.12,
//! the newest Debian ships.

/// A Debian release the lab takes a kernel (and busybox) from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DebianRelease {
    /// Debian 12: Linux 6.1, `memfd_secret` (booted with `secretmem.enable=1`).
    Bookworm,
    /// Debian 11: Linux 5.10, no `memfd_secret` (it came in 5.14).
    Bullseye,
    /// Debian 13: Linux 6.12; its modules are xz-compressed, its files are
    /// under `/usr`, and its x86 bzImage holds a zstd payload.
    Trixie,
}

impl DebianRelease {
    /// Every release, the default one first.
    pub const ALL: [DebianRelease; 3] = [
        DebianRelease::Bookworm,
        DebianRelease::Bullseye,
        DebianRelease::Trixie,
    ];

    /// The kernel series, as `--kernel` and the legs name it: `6.1`, `5.10`.
    pub fn kernel_series(self) -> &'static str {
        match self {
            DebianRelease::Bookworm => "6.1",
            DebianRelease::Bullseye => "5.10",
            DebianRelease::Trixie => "6.12",
        }
    }

    /// `Debian 12`, for the report.
    pub fn name(self) -> &'static str {
        match self {
            DebianRelease::Bookworm => "Debian 12",
            DebianRelease::Bullseye => "Debian 11",
            DebianRelease::Trixie => "Debian 13",
        }
    }

    /// The suites fetched from, each with the URI used when the host's
    /// sources do not name it; security is where the newest kernels are.
    pub(super) fn suites(self) -> [(&'static str, &'static str); 3] {
        let (release, updates, security) = match self {
            DebianRelease::Bookworm => ("bookworm", "bookworm-updates", "bookworm-security"),
            DebianRelease::Bullseye => ("bullseye", "bullseye-updates", "bullseye-security"),
            DebianRelease::Trixie => ("trixie", "trixie-updates", "trixie-security"),
        };
        [
            (release, "http://deb.debian.org/debian"),
            (updates, "http://deb.debian.org/debian"),
            (security, "http://deb.debian.org/debian-security"),
        ]
    }

    /// The kernel packages' names around their ABI number N:
    /// `PREFIX N SUFFIX-ARCH` (`linux-image-6.1.0-` 57 `-amd64`;
    /// `linux-image-6.12.` 117 `+deb13` `-amd64`).
    pub(super) fn kernel_name(self) -> (&'static str, &'static str) {
        match self {
            DebianRelease::Bookworm => ("linux-image-6.1.0-", ""),
            DebianRelease::Bullseye => ("linux-image-5.10.0-", ""),
            DebianRelease::Trixie => ("linux-image-6.12.", "+deb13"),
        }
    }

    /// Where its packages put `lib/modules` and `bin/busybox`: under
    /// `usr/` since trixie merged `/usr`.
    pub(super) fn usr(self) -> &'static str {
        match self {
            DebianRelease::Bookworm | DebianRelease::Bullseye => "",
            DebianRelease::Trixie => "usr/",
        }
    }

    /// The cache directory of `debian_arch`'s assets: bookworm's keeps the
    /// name it had before there was a second release.
    pub(super) fn cache_name(self, debian_arch: &str) -> String {
        match self {
            DebianRelease::Bookworm => debian_arch.to_owned(),
            DebianRelease::Bullseye => format!("{debian_arch}-bullseye"),
            DebianRelease::Trixie => format!("{debian_arch}-trixie"),
        }
    }
}
