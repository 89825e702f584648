#!/usr/bin/env bash
# One cell of the CI matrix: ci/cell.sh ARCH FEATURES
# (x86_64|aarch64, no-seccomp|seccomp). The steps are xtask's (`cargo xtask ci
# --arch ARCH --features FEATURES`, docs/release.md lists them per cell).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. ci/cargo-env.sh
cargo xtask ci --arch "$1" --features "$2"
