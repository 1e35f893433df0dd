#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages, formatting, lints, every test.
# Tests that need root, crun/runc, overlayfs or cgroups run for real; run this as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# botocore and the AWS CLI from PyPI, for the Lambda Invoke API tests (which skip without them).
scripts/pyenv.sh >/dev/null || echo "test: scripts/pyenv.sh failed; the Lambda Invoke API tests will skip" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi
