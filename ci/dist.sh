#!/usr/bin/env bash
# The release: `cargo xtask dist` (the lab on both targets, then target/dist
# from verified binaries only). A signing key given as the secret's content in
# DAZAI_SIGNING_KEY_CONTENT is written to a private file for ssh-keygen.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. ci/cargo-env.sh
if [ -n "${DAZAI_SIGNING_KEY_CONTENT:-}" ]; then
    key_dir="$(mktemp -d)"
    trap 'rm -rf "$key_dir"' EXIT
    (umask 077 && printf '%s\n' "$DAZAI_SIGNING_KEY_CONTENT" > "$key_dir/release_key")
    export DAZAI_SIGNING_KEY="$key_dir/release_key"
fi
cargo xtask dist
