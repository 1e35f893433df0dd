#!/usr/bin/env bash
# Creates the Python environment the tests of the Lambda Invoke API drive Wharf with: AWS's SDK
# core (botocore) and the AWS CLI, pinned, in <repo>/target/pyvenv. Idempotent: a venv that
# already has these versions is left as it is. Needs python3 with venv (scripts/setup.sh) and
# PyPI. Prints the venv's path on success.
set -euo pipefail
cd "$(dirname "$0")/.."

BOTOCORE_VERSION=1.44.8
AWSCLI_VERSION=1.46.3
venv=target/pyvenv
stamp="$venv/.wharf-botocore-$BOTOCORE_VERSION-awscli-$AWSCLI_VERSION"

mkdir -p target
# Tests may run this at the same time: one creates, the others wait.
exec 9>target/pyvenv.lock
flock 9
if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "botocore==$BOTOCORE_VERSION" "awscli==$AWSCLI_VERSION" >&2
    touch "$stamp"
    echo "pyenv: botocore $BOTOCORE_VERSION, $("$venv/bin/aws" --version 2>&1)" >&2
fi
echo "$PWD/$venv"
