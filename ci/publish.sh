#!/usr/bin/env bash
# Publishes target/dist as the assets of the release TAG: `cargo xtask publish TAG`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. ci/cargo-env.sh
exec cargo xtask publish "$1"
