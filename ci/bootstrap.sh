#!/usr/bin/env bash
# A bare Debian 12 runner (the workflows' container) to the point where
# `cargo xtask` runs: rustup with the toolchain rust-toolchain.toml pins.
# Everything else (rustfmt, clippy, nextest, Debian packages, docker, qemu,
# cross) is installed by `cargo xtask ci` / `lab` / `dist` themselves.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v curl >/dev/null || ! command -v cc >/dev/null || ! command -v git >/dev/null; then
    echo "bootstrap: installing curl, ca-certificates, gcc, libc6-dev, git"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        curl ca-certificates gcc libc6-dev git
fi
. ci/cargo-env.sh
if ! command -v rustup >/dev/null; then
    echo "bootstrap: installing rustup (no default toolchain; rust-toolchain.toml picks it)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --default-toolchain none --profile minimal
    . "$HOME/.cargo/env"
fi
rustup show active-toolchain || rustup toolchain install
if [ -n "${GITHUB_PATH:-}" ]; then
    echo "$HOME/.cargo/bin" >> "$GITHUB_PATH"
fi
