#!/usr/bin/env bash
# Installs AWS's Python runtime interface client (awslambdaric), pinned, with its dependencies
# into <repo>/target/awslambdaric, for the Python image of the lambda contract's tests (which
# pack it with the host's /usr/bin/python3). Idempotent. Needs python3 with venv
# (scripts/setup.sh) and PyPI. Prints the directory on success.
set -euo pipefail
cd "$(dirname "$0")/.."

AWSLAMBDARIC_VERSION=4.2.2
# The interpreter the image will run: the wheels must be built for its version.
python=/usr/bin/python3
dir=target/awslambdaric
stamp="$dir/.wharf-awslambdaric-$AWSLAMBDARIC_VERSION-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

mkdir -p target
exec 9>target/awslambdaric.lock
flock 9
if [ ! -f "$stamp" ]; then
    rm -rf "$dir" target/awslambdaric-venv
    "$python" -m venv target/awslambdaric-venv
    target/awslambdaric-venv/bin/pip install --quiet --disable-pip-version-check --no-compile \
        --target "$dir" "awslambdaric==$AWSLAMBDARIC_VERSION" >&2
    touch "$stamp"
    echo "lambda-python: awslambdaric $AWSLAMBDARIC_VERSION in $dir" >&2
fi
echo "$PWD/$dir"
