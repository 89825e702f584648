//! Redaction of an exec tool's output: every injected secret is replaced, in
//! each form a program is likely to print it in, before the output reaches the
//! agent.
//!
//! The forms: the raw bytes; base64 and base64url, padded or not, also when a
//! tool wraps the text in lines (`base64` does at 76 columns) and when the
//! secret sits inside a longer encoded value (an HTTP Basic header, a JSON
//! blob: the secret then starts at any of the three offsets within a base64
//! group); hex in either case; and URL encoding as the common encoders write
//! it (everything escaped, RFC 3986 unreserved kept, `/` kept too, the
//! `encodeURIComponent` set, and HTML form encoding with `+` for a space),
//! with either case of hex digits.
//!
//! The encoded forms are as secret as the secret; they live in [`Wiped`]
//! buffers, wiped when the redactor drops.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::wiped::Wiped;

/// RFC 3986 unreserved characters stay as they are.
const UNRESERVED_KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Python's `quote()` also keeps `/`.
const PATH_KEPT: &AsciiSet = &UNRESERVED_KEPT.remove(b'/');
/// JavaScript's `encodeURIComponent` keeps `- _ . ! ~ * ' ( )`.
const COMPONENT_KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');
/// HTML form encoding keeps `* - . _` (and writes a space as `+`).
const FORM_KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b' ');

/// A shifted base64 core shorter than this is not used: it would match too
/// much unrelated text.
const MIN_CORE_CHARS: usize = 8;

/// How a needle is compared with the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compare {
    /// Byte for byte.
    Exact,
    /// ASCII letters in either case (hex digits).
    AnyCase,
    /// Byte for byte, skipping line breaks in the output (wrapped base64).
    SkipLineBreaks,
}

struct Needle {
    bytes: Wiped,
    compare: Compare,
    /// Index into the redactor's secret names.
    secret: usize,
}

/// Replaces every known form of the injected secrets in a program's output.
#[derive(Default)]
pub struct Redactor {
    names: Vec<String>,
    needles: Vec<Needle>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Redactor({} secrets, {} forms)",
            self.names.len(),
            self.needles.len()
        )
    }
}

/// What one redaction pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Redaction {
    /// The output with every form replaced by `[REDACTED:NAME]`.
    pub text: Vec<u8>,
    /// How many replacements were made.
    pub replaced: usize,
}

impl Redactor {
    /// A redactor that knows no secret yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns `secret` (named `name` in the replacement marker) in every form.
    pub fn add_secret(&mut self, name: &str, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        let index = self.names.len();
        self.names.push(name.to_owned());
        self.push(Wiped::from_slice(secret), Compare::Exact, index);
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            self.push(
                encode_base64(engine, secret),
                Compare::SkipLineBreaks,
                index,
            );
        }
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            for shift in 0..3 {
                if let Some(core) = shifted_base64_core(engine, secret, shift) {
                    self.push(core, Compare::SkipLineBreaks, index);
                }
            }
        }
        let mut hex = Wiped::zeroed(secret.len() * 2);
        if hex::encode_to_slice(secret, hex.as_mut_slice()).is_ok() {
            self.push(hex, Compare::AnyCase, index);
        }
        for set in [NON_ALPHANUMERIC, UNRESERVED_KEPT, PATH_KEPT, COMPONENT_KEPT] {
            self.push(url_encode(secret, set, false), Compare::AnyCase, index);
        }
        self.push(url_encode(secret, FORM_KEPT, true), Compare::AnyCase, index);
    }

    fn push(&mut self, bytes: Wiped, compare: Compare, secret: usize) {
        if bytes.as_slice().is_empty() {
            return;
        }
        let duplicate = self
            .needles
            .iter()
            .any(|n| n.compare == compare && n.bytes.as_slice() == bytes.as_slice());
        if !duplicate {
            self.needles.push(Needle {
                bytes,
                compare,
                secret,
            });
        }
    }

    /// How many distinct forms are known (for tests and logs).
    pub fn forms(&self) -> usize {
        self.needles.len()
    }

    /// [`redact`](Self::redact) for output that was cut short (at the cap,
    /// the time limit, a cancel): a trailing piece that begins a form may be
    /// the first part of a secret whose rest was cut off, and is replaced
    /// too. The earliest such start wins, before any whole form is matched
    /// (a whole form could otherwise swallow the head of the cut one), and
    /// what is left is searched again, so a form cut twice over is caught.
    pub fn redact_cut(&self, output: &[u8]) -> Redaction {
        let mut end = output.len();
        let mut cut_secret = None;
        while let Some((start, needle)) = self.cut_off_form(&output[..end]) {
            end = start;
            cut_secret = Some(needle.secret);
        }
        let mut redaction = self.redact(&output[..end]);
        if let Some(secret) = cut_secret {
            self.mark(&mut redaction, secret);
        }
        redaction
    }

    /// The earliest start of a trailing piece of `output` that begins a form.
    fn cut_off_form(&self, output: &[u8]) -> Option<(usize, &Needle)> {
        let longest = self
            .needles
            .iter()
            .map(|n| match n.compare {
                // Wrapped base64 may hold a CRLF every 64 characters or more.
                Compare::SkipLineBreaks => n.bytes.as_slice().len() * 2,
                _ => n.bytes.as_slice().len(),
            })
            .max()?;
        (output.len().saturating_sub(longest)..output.len()).find_map(|start| {
            self.needles
                .iter()
                .find(|needle| begins(needle, &output[start..]))
                .map(|needle| (start, needle))
        })
    }

    fn mark(&self, redaction: &mut Redaction, secret: usize) {
        redaction.text.extend_from_slice(b"[REDACTED:");
        redaction
            .text
            .extend_from_slice(self.names[secret].as_bytes());
        redaction.text.push(b']');
        redaction.replaced += 1;
    }

    /// `output` with every form of every secret replaced. Every match of
    /// every form is found first and overlapping matches merge into one
    /// marker: a greedy longest match could end inside the next secret (a
    /// padded base64 form swallowing the head of a raw secret beside it) and
    /// leave the rest of that secret unmatched.
    pub fn redact(&self, output: &[u8]) -> Redaction {
        let matches = (0..output.len()).flat_map(|at| {
            self.needles.iter().filter_map(move |needle| {
                matched_len(needle, &output[at..]).map(|len| (at, at + len, needle.secret))
            })
        });
        let mut merged: Vec<(usize, usize, usize)> = Vec::new();
        for (start, end, secret) in matches {
            match merged.last_mut() {
                Some(last) if start < last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end, secret)),
            }
        }
        let mut redaction = Redaction {
            text: Vec::with_capacity(output.len()),
            replaced: 0,
        };
        let mut shown_up_to = 0;
        for (start, end, secret) in merged {
            redaction
                .text
                .extend_from_slice(&output[shown_up_to..start]);
            self.mark(&mut redaction, secret);
            shown_up_to = end;
        }
        redaction.text.extend_from_slice(&output[shown_up_to..]);
        redaction
    }
}

/// Whether all of `rest` (not empty) is the beginning of `needle`'s form,
/// short of its end: what is left of a secret when output is cut inside it.
fn begins(needle: &Needle, rest: &[u8]) -> bool {
    let pattern = needle.bytes.as_slice();
    if rest.is_empty() {
        return false;
    }
    match needle.compare {
        Compare::Exact => rest.len() < pattern.len() && pattern.starts_with(rest),
        Compare::AnyCase => {
            rest.len() < pattern.len() && pattern[..rest.len()].eq_ignore_ascii_case(rest)
        }
        Compare::SkipLineBreaks => {
            let mut j = 0;
            for (i, &byte) in rest.iter().enumerate() {
                if j < pattern.len() && byte == pattern[j] {
                    j += 1;
                } else if i == 0 || !(byte == b'\n' || byte == b'\r') {
                    return false;
                }
            }
            j < pattern.len()
        }
    }
}

/// The length of output that `needle` matches at the start of `rest`.
fn matched_len(needle: &Needle, rest: &[u8]) -> Option<usize> {
    let pattern = needle.bytes.as_slice();
    let first = *pattern.first()?;
    let head = *rest.first()?;
    match needle.compare {
        Compare::Exact => (head == first && rest.starts_with(pattern)).then_some(pattern.len()),
        Compare::AnyCase => (head.eq_ignore_ascii_case(&first)
            && rest.len() >= pattern.len()
            && rest[..pattern.len()].eq_ignore_ascii_case(pattern))
        .then_some(pattern.len()),
        Compare::SkipLineBreaks => {
            if head != first {
                return None;
            }
            let (mut i, mut j) = (0, 0);
            while j < pattern.len() {
                let byte = *rest.get(i)?;
                if byte == pattern[j] {
                    j += 1;
                } else if !(j > 0 && (byte == b'\n' || byte == b'\r')) {
                    return None;
                }
                i += 1;
            }
            Some(i)
        }
    }
}

fn encode_base64(engine: &impl Engine, secret: &[u8]) -> Wiped {
    let mut out = Wiped::zeroed(secret.len().div_ceil(3) * 4);
    let written = engine.encode_slice(secret, out.as_mut_slice()).unwrap_or(0);
    out.truncate(written);
    out
}

/// The base64 characters that depend on the secret's bytes alone when it
/// starts `shift` bytes into a 3-byte group of a longer encoded value.
fn shifted_base64_core(engine: &impl Engine, secret: &[u8], shift: usize) -> Option<Wiped> {
    let mut shifted = Wiped::zeroed(shift + secret.len());
    shifted.as_mut_slice()[shift..].copy_from_slice(secret);
    let encoded = encode_base64(engine, shifted.as_slice());
    // Character i covers bits 6i..6i+6; the secret covers bits 8*shift..8*(shift+len).
    let first = (8 * shift).div_ceil(6);
    let end = (8 * (shift + secret.len())) / 6;
    if end <= first || end - first < MIN_CORE_CHARS {
        return None;
    }
    Some(Wiped::from_slice(&encoded.as_slice()[first..end]))
}

fn url_encode(secret: &[u8], set: &'static AsciiSet, plus_for_space: bool) -> Wiped {
    let mut out = Wiped::zeroed(secret.len() * 3);
    let mut len = 0;
    for chunk in percent_encode(secret, set) {
        for &byte in chunk.as_bytes() {
            out.as_mut_slice()[len] = if plus_for_space && byte == b' ' {
                b'+'
            } else {
                byte
            };
            len += 1;
        }
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cr3t/t0ken+with space&more?~=";

    fn redactor() -> Redactor {
        let mut redactor = Redactor::new();
        redactor.add_secret("api", SECRET);
        redactor
    }

    fn redacted(output: &[u8]) -> String {
        String::from_utf8(redactor().redact(output).text).unwrap()
    }

    fn assert_gone(form: &str, output: &[u8]) {
        let text = redacted(output);
        assert!(text.contains("[REDACTED:api]"), "{form}: {text}");
        for piece in [&b"s3cr3t"[..], b"czNjcjN0", b"7333637233", b"t0ken"] {
            assert!(
                !text.as_bytes().windows(piece.len()).any(|w| w == piece),
                "{form}: a piece of the secret survived in {text}"
            );
        }
    }

    #[test]
    fn the_raw_secret_is_redacted() {
        let mut output = b"token=".to_vec();
        output.extend_from_slice(SECRET);
        output.extend_from_slice(b" end");
        assert_eq!(redacted(&output), "token=[REDACTED:api] end");
    }

    #[test]
    fn base64_padded_and_unpadded_is_redacted() {
        for engine in [STANDARD, STANDARD_NO_PAD] {
            let output = format!("Authorization: {}\n", engine.encode(SECRET));
            assert_eq!(
                redacted(output.as_bytes()),
                "Authorization: [REDACTED:api]\n"
            );
        }
    }

    #[test]
    fn base64url_padded_and_unpadded_is_redacted() {
        for engine in [URL_SAFE, URL_SAFE_NO_PAD] {
            let encoded = engine.encode(SECRET);
            assert_gone("base64url", format!("x {encoded} y").as_bytes());
        }
    }

    #[test]
    fn base64_wrapped_in_lines_is_redacted() {
        let long: Vec<u8> = (0..120u8).map(|i| b'a' + i % 26).collect();
        let mut redactor = Redactor::new();
        redactor.add_secret("long", &long);
        let encoded = STANDARD.encode(&long);
        let wrapped = format!("{}\n{}\n", &encoded[..76], &encoded[76..]);
        let text = String::from_utf8(redactor.redact(wrapped.as_bytes()).text).unwrap();
        assert_eq!(text, "[REDACTED:long]\n");
    }

    #[test]
    fn base64_of_a_value_that_embeds_the_secret_is_redacted() {
        for prefix in ["", "u:", "us:", "user:"] {
            let mut value = prefix.as_bytes().to_vec();
            value.extend_from_slice(SECRET);
            value.extend_from_slice(b"!");
            let output = format!("Basic {}", STANDARD.encode(&value));
            let text = redacted(output.as_bytes());
            assert!(text.contains("[REDACTED:api]"), "{prefix:?}: {text}");
            // Only the neighbours' characters, and the few that mix their bits
            // with the secret's first or last bits, survive.
            let left = text.len() - "Basic ".len() - "[REDACTED:api]".len();
            assert!(
                left <= STANDARD.encode(prefix).len() + 4,
                "{prefix:?}: {text}"
            );
        }
    }

    #[test]
    fn hex_in_either_case_is_redacted() {
        assert_gone("hex", hex::encode(SECRET).as_bytes());
        assert_gone("HEX", hex::encode_upper(SECRET).as_bytes());
    }

    #[test]
    fn url_encoded_forms_are_redacted() {
        let forms = [
            percent_encode(SECRET, NON_ALPHANUMERIC).to_string(),
            percent_encode(SECRET, UNRESERVED_KEPT).to_string(),
            percent_encode(SECRET, PATH_KEPT).to_string(),
            percent_encode(SECRET, COMPONENT_KEPT).to_string(),
            percent_encode(SECRET, FORM_KEPT)
                .to_string()
                .replace(' ', "+"),
            percent_encode(SECRET, NON_ALPHANUMERIC)
                .to_string()
                .to_lowercase(),
        ];
        for form in forms {
            assert_eq!(
                redacted(format!("?token={form}&x=1").as_bytes()),
                "?token=[REDACTED:api]&x=1",
                "{form}"
            );
        }
    }

    #[test]
    fn output_without_a_secret_is_unchanged() {
        let output = b"deploy: production healthy (3/3)\n";
        let redaction = redactor().redact(output);
        assert_eq!(redaction.text, output);
        assert_eq!(redaction.replaced, 0);
    }

    #[test]
    fn several_secrets_are_each_named() {
        let mut redactor = Redactor::new();
        redactor.add_secret("a", b"alpha-secret");
        redactor.add_secret("b", b"bravo-secret");
        let text = redactor.redact(b"alpha-secret bravo-secret").text;
        assert_eq!(text, b"[REDACTED:a] [REDACTED:b]");
    }

    #[test]
    fn the_redactor_never_prints_a_secret() {
        assert_eq!(format!("{:?}", redactor()), "Redactor(1 secrets, 15 forms)");
    }
}
