#!/usr/bin/env bash
# Measures Wharf against its baselines (docs/PERFORMANCE.md): builds wharf, wharf-testfn and
# wharf-bench in release, then runs wharf-bench as root with the arguments given here, e.g.
#   scripts/bench.sh                          # the default run, under 5 minutes on 2 cores
#   scripts/bench.sh --out run.json           # also write the results as JSON
#   scripts/bench.sh --against run.json       # print each figure beside an earlier run's
#   scripts/bench.sh --only P1,P4 --samples 20
#   scripts/bench.sh --full                   # also 200 frozen instances (P10-P12)
# The binaries go to $CARGO_TARGET_DIR (default target/), the generated images and npm's
# packages to its bench-cache/ (kept between runs). Not part of the tests; CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# What the benchmark needs beyond Wharf's own packages: zstd and gzip for the pull baselines,
# node and npm for the Node/Express image (without them that one line is an ERROR).
missing=()
for tool in zstd gzip tar; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "bench: node or npm is missing; the Node/Express figure will say so" >&2
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin wharf --bin wharf-testfn --bin wharf-bench

bench=("$target/release/wharf-bench" --cache-dir "$target/bench-cache" "$@")
if [ "$(id -u)" -eq 0 ]; then
    exec "${bench[@]}"
else
    exec sudo -E "${bench[@]}"
fi
