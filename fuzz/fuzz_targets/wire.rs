//! The wire-protocol decoder (`dazai_client::protocol`): what the daemon runs
//! on every line a peer sends (`check_line`, `parse_request`) and what every
//! client runs on the daemon's replies (`parse_reply`, `ping_timeout_of`).
//!
//! Beyond "never panics", each input checks the promises `docs/protocol.md`
//! makes about the decoder:
//! - a request is accepted only if the line is short, printable ASCII;
//! - an accepted request prints as a canonical line that parses back to it;
//! - an `ERR` cause is one short line of printable ASCII (a reply can never
//!   be split or forged by echoed bytes, and echoes no more than a short word);
//! - a reply that parses prints as a line that parses back to it.

#![no_main]

use dazai_client::protocol::{
    check_line, parse_reply, parse_request, ping_timeout_of, Reply, MAX_LINE,
};
use libfuzzer_sys::fuzz_target;

/// Longest `ERR` cause: the longest fixed text plus a short echoed word.
const MAX_CAUSE: usize = 128;

fuzz_target!(|data: &[u8]| {
    // The whole input as one line, then as the lines a stream would carry.
    check_request_line(data);
    check_reply_line(data);
    for line in data.split(|&b| b == b'\n') {
        check_request_line(line);
        check_reply_line(line);
    }
});

fn check_request_line(line: &[u8]) {
    let printable_and_short =
        line.len() < MAX_LINE && line.iter().all(|b| (0x20..0x7f).contains(b));
    assert_eq!(
        check_line(line).is_ok(),
        printable_and_short,
        "check_line disagrees with its contract on {line:?}"
    );
    match parse_request(line) {
        Ok(request) => {
            assert!(printable_and_short, "accepted a bad line {line:?}");
            let canonical = request.to_string();
            assert!(canonical.len() < MAX_LINE, "canonical line too long");
            assert_eq!(
                parse_request(canonical.as_bytes()),
                Ok(request),
                "{canonical:?} does not round-trip"
            );
        }
        Err(error) => {
            let cause = error.to_string();
            assert!(
                cause.len() <= MAX_CAUSE,
                "ERR cause of {} bytes echoes too much: {cause:?}",
                cause.len()
            );
            assert!(
                cause.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "ERR cause is not one printable line: {cause:?}"
            );
        }
    }
}

fn check_reply_line(line: &[u8]) {
    let Ok(reply) = parse_reply(line) else {
        return;
    };
    if let Reply::Ok(text) = &reply {
        let _ = ping_timeout_of(text);
    }
    let printed = reply.to_string();
    assert_eq!(
        parse_reply(printed.as_bytes()),
        Ok(reply),
        "{printed:?} does not round-trip"
    );
}
