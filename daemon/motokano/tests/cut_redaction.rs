//! The output cap and the redactor together: whatever the program prints,
//! wherever the secret lies, in whichever form, and wherever the cap, the time
//! limit or a cancel cuts, no run of 8 or more bytes of any form of the secret
//! reaches the agent.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use motokano::redact::Redactor;
use motokano::server::what_the_agent_sees;
use proptest::prelude::*;

/// The forms the program prints the secret in (each one the redactor knows).
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let url =
        percent_encoding::percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string();
    vec![
        secret.to_vec(),
        STANDARD.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        url.into_bytes(),
    ]
}

/// Whether `shown` holds 8 or more consecutive bytes of some form.
fn leaks(shown: &[u8], secret: &[u8]) -> Option<String> {
    forms(secret).iter().find_map(|form| {
        form.windows(8.min(form.len()))
            .find(|run| shown.windows(run.len()).any(|w| w == *run))
            .map(|run| String::from_utf8_lossy(run).into_owned())
    })
}

/// Output of printable noise from an alphabet no secret uses, with the
/// secret's forms put in at the given places.
fn output_with(noise: &[u8], placements: &[(usize, usize)], secret: &[u8]) -> Vec<u8> {
    let forms = forms(secret);
    let mut output = noise.to_vec();
    let mut placements = placements.to_vec();
    placements.sort_unstable_by_key(|&(at, _)| std::cmp::Reverse(at));
    // From the last place to the first, each within the noise: an earlier
    // insertion never moves a later one, and no form lands inside another.
    for (at, form) in placements {
        let at = at.min(noise.len());
        let form = &forms[form % forms.len()];
        output.splice(at..at, form.iter().copied());
    }
    output
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn no_run_of_eight_bytes_of_a_secret_passes_any_cut(
        secret in "[g-z!#&+/=?>]{8,120}",
        noise_out in "[A-F0-9 \n.:_-]{0,400}",
        noise_err in "[A-F0-9 \n.:_-]{0,200}",
        out_places in proptest::collection::vec((0usize..400, 0usize..6), 0..4),
        err_places in proptest::collection::vec((0usize..200, 0usize..6), 0..3),
        max in 1usize..1200,
        stopped in any::<bool>(),
    ) {
        let secret = secret.as_bytes();
        let mut redactor = Redactor::new();
        redactor.add_secret("api", secret);
        let stdout = output_with(noise_out.as_bytes(), &out_places, secret);
        let stderr = output_with(noise_err.as_bytes(), &err_places, secret);

        let shown = what_the_agent_sees(&redactor, &stdout, &stderr, max, stopped);

        for (stream, text) in [("stdout", &shown.stdout), ("stderr", &shown.stderr)] {
            prop_assert!(
                leaks(text.as_bytes(), secret).is_none(),
                "{} shows {:?} of the secret (max {}, stopped {})",
                stream,
                leaks(text.as_bytes(), secret),
                max,
                stopped
            );
        }
    }
}

/// The layout that leaked: a 100-byte secret, a cap of 1000 bytes, the secret
/// across the cut. Before the fix, the cap was applied to the redacted text
/// and the agent received the secret's first 60 bytes.
#[test]
fn a_secret_across_the_cap_is_redacted_not_cut() {
    let secret: Vec<u8> = (0..100).map(|i| b"ghijklmnopqrstuvwxyz"[i % 20]).collect();
    let mut redactor = Redactor::new();
    redactor.add_secret("api", &secret);
    let mut stdout = b"[REDACTED:api] ".repeat(2);
    stdout.splice(0..0, secret.iter().copied());
    stdout.extend(std::iter::repeat_n(b'.', 950 - stdout.len()));
    stdout.extend_from_slice(&secret);
    let shown = what_the_agent_sees(&redactor, &stdout, b"", 1000, true);
    assert!(shown.truncated);
    assert!(
        leaks(shown.stdout.as_bytes(), &secret).is_none(),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.ends_with("[REDACTED:api]"), "{}", shown.stdout);
}
