#!/usr/bin/env bash
# The release: `cargo xtask dist` (the lab on both targets, then target/dist
# from verified binaries only; it signs with the key in DAZAI_SIGNING_KEY_CONTENT).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. ci/cargo-env.sh
exec cargo xtask dist
