#!/usr/bin/env bash
# Installs what Wharf and its tests need from Debian's packages, skipping what is present.
#   crun, runc         OCI runtimes (Wharf prefers crun, falls back to runc)
#   docker-registry    the distribution registry, run on loopback by the tests and the quickstart
#   busybox-static     the root filesystem of the sandbox's own tests
#   skopeo, umoci      image tooling used by tests of image archives
#   binutils           strip, to keep test images small
#   iproute2, procps   ip / ps, used by tests to inspect namespaces and processes
#   nftables           nft, run once when bridge networking is set up (NAT and filter table)
#   curl               health checks in the scripts
#   python3, -venv     the venv of AWS's botocore and CLI the Lambda Invoke API tests use
#                      (made by scripts/pyenv.sh)
set -euo pipefail

need=()
want() { # want COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || need+=("$2")
}
want crun crun
want runc runc
want docker-registry docker-registry
want busybox busybox-static
want skopeo skopeo
want umoci umoci
want strip binutils
want ip iproute2
want ps procps
want nft nftables
want curl curl
want python3 python3
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is not installed. Install Rust (https://rustup.rs) and run this again." >&2
    exit 1
fi

if [ ${#need[@]} -eq 0 ]; then
    echo "setup: all system packages present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "setup: need root to install: ${need[*]}" >&2
        exit 1
    fi
fi
echo "setup: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The docker-registry package may start a system-wide registry on :5000 through its init
# script; Wharf's tests and quickstart run their own, so stop that one if it started.
if command -v service >/dev/null 2>&1; then
    $sudo service docker-registry stop >/dev/null 2>&1 || true
fi
echo "setup: done"
