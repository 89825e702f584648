//! `Wiped`: secret-derived bytes in ordinary memory, wiped when dropped.
//!
//! For what cannot live in a `SecretBuffer`: the encoded forms a redactor
//! looks for, and a child's environment block (a forked child must be able to
//! read it, and `SecretBuffer` pages are not inherited by a fork). The bytes
//! are not locked; they are overwritten with [`goodnight::wipe_bytes`] as soon
//! as they are no longer needed, and never printed.

use std::fmt;

/// A heap buffer of fixed capacity that is wiped on drop and never printed.
///
/// It never grows, so the allocator never copies it and leaves a stale copy
/// behind.
pub struct Wiped {
    bytes: Box<[u8]>,
    len: usize,
}

impl Wiped {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Self {
            bytes: vec![0u8; len].into_boxed_slice(),
            len,
        }
    }

    /// A copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut wiped = Self::zeroed(bytes.len());
        wiped.bytes.copy_from_slice(bytes);
        wiped
    }

    /// The bytes held.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The bytes held, to fill in place.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }

    /// Keeps the first `len` bytes, wiping the rest.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            goodnight::wipe_bytes(&mut self.bytes[len..self.len]);
            self.len = len;
        }
    }

    /// Overwrites every byte with zero now.
    pub fn wipe(&mut self) {
        goodnight::wipe_bytes(&mut self.bytes);
        self.len = 0;
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        goodnight::wipe_bytes(&mut self.bytes);
    }
}

impl fmt::Debug for Wiped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wiped({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_the_head_and_debug_shows_no_bytes() {
        let mut wiped = Wiped::from_slice(b"secret-bytes");
        wiped.truncate(6);
        assert_eq!(wiped.as_slice(), b"secret");
        assert_eq!(format!("{wiped:?}"), "Wiped(6 bytes)");
        wiped.wipe();
        assert!(wiped.as_slice().is_empty());
    }
}
