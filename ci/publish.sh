#!/usr/bin/env bash
# Publishes target/dist as the assets of the release TAG (ci/publish.sh TAG),
# with Debian's `gh`; GH_TOKEN comes from the workflow. Refuses an empty or
# incomplete dist: cargo xtask dist writes it whole or not at all.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for needed in SHA256SUMS provenance.json lab-report.json lab-report.md; do
    [ -f "target/dist/$needed" ] || { echo "publish: target/dist/$needed is missing; run cargo xtask dist" >&2; exit 1; }
done
if ! command -v gh >/dev/null; then
    echo "publish: installing gh"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gh
fi
gh release create "$1" --title "dazai $1" --notes-file target/dist/lab-report.md target/dist/*
