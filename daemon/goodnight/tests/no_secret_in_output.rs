//! The buffer is move-only, with no `Clone`, no `Copy` and no `Debug` or
//! `Display` that prints its contents (docs/design.md, "Secret memory").
//! Errors are one line, cause then fix, and carry no secret bytes.

mod common;

use std::os::fd::AsFd;

use common::pipe_holding;
use goodnight::{HardeningError, LockPolicy, SecretBuffer, SecretError, SecretMemUnavailable};
use nix::errno::Errno;

const CANARY: &str = "canary-c0ffee-not-a-real-secret";

#[test]
fn debug_of_a_buffer_holding_a_canary_prints_only_its_length() {
    let mut secret = SecretBuffer::new(64, LockPolicy::Required).expect("buffer");
    secret
        .read_from(pipe_holding(CANARY.as_bytes()).as_fd())
        .expect("fill");

    let debug = format!("{secret:?} {secret:#?}");

    assert_eq!(
        debug,
        format!(
            "SecretBuffer({0} bytes) SecretBuffer({0} bytes)",
            CANARY.len()
        )
    );
}

#[test]
fn a_too_long_error_from_a_canary_source_shows_neither_the_canary_nor_any_part_of_it() {
    let mut secret = SecretBuffer::new(8, LockPolicy::Required).expect("buffer");

    let error = secret
        .read_from(pipe_holding(CANARY.as_bytes()).as_fd())
        .expect_err("longer than 8 bytes");
    let shown = format!("{error} {error:?} {secret:?}");

    assert_eq!(error, SecretError::TooLong { capacity: 8 });
    assert!(!shown.contains(&CANARY[..8]), "{shown}");
    assert!(!shown.contains("canary"), "{shown}");
}

#[test]
fn every_error_displays_as_one_line_with_a_cause_and_a_fix() {
    let secret_errors = [
        SecretError::LockRefused {
            requested: 65536,
            soft_limit: Some(8192),
            errno: Errno::EPERM,
        },
        SecretError::LockRefused {
            requested: 65536,
            soft_limit: None,
            errno: Errno::EAGAIN,
        },
        SecretError::AdviseRefused {
            advice: "MADV_DONTDUMP",
            errno: Errno::EINVAL,
        },
        SecretError::OutOfAddressSpace {
            requested: usize::MAX,
            errno: Errno::ENOMEM,
        },
        SecretError::TooLong { capacity: 8 },
        SecretError::Read { errno: Errno::EIO },
        SecretError::SecretMemUnavailable(SecretMemUnavailable::DisabledAtBoot),
        SecretError::SecretMemUnavailable(SecretMemUnavailable::NotInKernel),
        SecretError::SecretMemUnavailable(SecretMemUnavailable::OverMemlockLimit {
            requested: 65536,
            soft_limit: Some(8192),
        }),
        SecretError::SecretMemUnavailable(SecretMemUnavailable::OverMemlockLimit {
            requested: 65536,
            soft_limit: None,
        }),
        SecretError::SecretMemUnavailable(SecretMemUnavailable::FirstTouchRefused {
            requested: 65536,
            soft_limit: Some(8192),
            errno: Errno::EFAULT,
        }),
        SecretError::SecretMemUnavailable(SecretMemUnavailable::FirstTouchRefused {
            requested: 65536,
            soft_limit: None,
            errno: Errno::EFAULT,
        }),
        SecretError::SecretMemUnavailable(SecretMemUnavailable::Refused {
            call: "memfd_secret(2)",
            errno: Errno::EPERM,
        }),
        SecretError::UnknownMemoryBackend {
            value: "secret".to_owned(),
        },
    ];
    let hardening_errors = [
        HardeningError::GetLimit {
            resource: "RLIMIT_MEMLOCK",
            errno: Errno::EFAULT,
        },
        HardeningError::SetLimit {
            resource: "RLIMIT_CORE",
            soft: Some(0),
            hard: None,
            errno: Errno::EPERM,
        },
        HardeningError::Prctl {
            operation: "PR_SET_DUMPABLE",
            errno: Errno::EINVAL,
        },
        HardeningError::StillDumpable,
    ];
    let lines = secret_errors
        .iter()
        .map(ToString::to_string)
        .chain(hardening_errors.iter().map(ToString::to_string));

    for line in lines {
        assert!(!line.contains('\n'), "{line:?}");
        let (cause, fix) = line
            .split_once("; fix: ")
            .unwrap_or_else(|| panic!("no fix in {line:?}"));
        assert!(!cause.is_empty() && !fix.is_empty(), "{line:?}");
    }
}

#[test]
fn the_lock_refused_message_matches_the_documented_wording() {
    let error = SecretError::LockRefused {
        requested: 65536,
        soft_limit: Some(8192),
        errno: Errno::EPERM,
    };

    assert_eq!(
        error.to_string(),
        "cannot lock 65536 bytes of secret memory: RLIMIT_MEMLOCK is 8192 bytes (EPERM); \
         fix: raise the limit (`ulimit -l`, LimitMEMLOCK= in systemd) or run with CAP_IPC_LOCK"
    );
}

#[test]
fn an_impossibly_large_capacity_is_an_out_of_address_space_error_not_a_panic() {
    let result = SecretBuffer::new(usize::MAX, LockPolicy::Required);

    assert!(
        matches!(
            result,
            Err(SecretError::OutOfAddressSpace {
                requested: usize::MAX,
                errno: Errno::ENOMEM
            })
        ),
        "{result:?}"
    );
}

#[test]
fn a_kernel_booted_without_secretmem_is_named_with_the_boot_parameter_and_the_locked_fallback() {
    let error = SecretError::SecretMemUnavailable(SecretMemUnavailable::DisabledAtBoot);

    assert_eq!(
        error.to_string(),
        "secretmem unavailable: kernel booted without secretmem.enable=1; fix: boot with \
         secretmem.enable=1 on the kernel command line, or use the locked backend \
         (--memory locked, DAZAI_MEMORY=locked)"
    );
}
