#!/usr/bin/env bash
# Rebuilds the release in target/dist from a clean clone at the commit its
# provenance names and compares every binary: `cargo xtask reproduce target/dist`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. ci/cargo-env.sh
exec cargo xtask reproduce target/dist
