# Sourced by .ci/run and the other ci/ scripts: puts rustup's cargo on PATH
# when the shell did not (a fresh login on a machine set up by rustup-init).
if ! command -v cargo >/dev/null && [ -f "${HOME:-}/.cargo/env" ]; then
    . "$HOME/.cargo/env"
fi
