#!/usr/bin/env bash
# Quickstart: install what is missing, build Wharf, start a loopback registry with an example
# function image in it (127.0.0.1:5000/hello:latest), start `wharf serve`, then deploy and
# invoke the example once.
#
#   scripts/quickstart.sh          set up and start everything
#   scripts/quickstart.sh stop     stop the daemon and the registry the quickstart started
#
# Runs as root (Wharf mounts filesystems and creates cgroups). State lives in
# $WHARF_DATA_DIR (default ~/.local/share/wharf) and ~/.local/share/wharf-quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

qs_dir="${XDG_DATA_HOME:-$HOME/.local/share}/wharf-quickstart"
registry_addr="127.0.0.1:5000"
wharf_url="${WHARF_URL:-http://127.0.0.1:9800}"
mkdir -p "$qs_dir"

stop_pidfile() { # stop_pidfile FILE NAME
    local f=$1 name=$2
    if [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; then
        echo "quickstart: stopping $name (pid $(cat "$f"))"
        kill -TERM "$(cat "$f")"
        for _ in $(seq 1 300); do
            kill -0 "$(cat "$f")" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$f"
}

if [ "${1:-}" = "stop" ]; then
    stop_pidfile "$qs_dir/wharf.pid" "wharf serve"
    stop_pidfile "$qs_dir/registry.pid" "the registry"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "quickstart: run as root (wharf serve mounts filesystems and creates cgroups)" >&2
    exit 1
fi

scripts/setup.sh

echo "quickstart: building (release)"
cargo build --release --locked --bin wharf --bin wharf-example --bin wharf-testfn
ln -sf "$repo/target/release/wharf" /usr/local/bin/wharf
echo "quickstart: wharf is on PATH as /usr/local/bin/wharf -> target/release/wharf"

# A registry on loopback, unless one already answers there.
if ! curl -fsS "http://$registry_addr/v2/" >/dev/null 2>&1; then
    mkdir -p "$qs_dir/registry"
    cat > "$qs_dir/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $qs_dir/registry
  delete:
    enabled: true
http:
  addr: $registry_addr
YML
    echo "quickstart: starting a registry on $registry_addr"
    nohup docker-registry serve "$qs_dir/registry.yml" >"$qs_dir/registry.log" 2>&1 &
    echo $! >"$qs_dir/registry.pid"
    for _ in $(seq 1 100); do
        curl -fsS "http://$registry_addr/v2/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://$registry_addr/v2/" >/dev/null || {
        echo "quickstart: the registry did not start; see $qs_dir/registry.log" >&2
        exit 1
    }
fi

echo "quickstart: pushing the example function image to $registry_addr/hello:latest"
target/release/wharf-example push "$registry_addr/hello:latest" --testfn target/release/wharf-testfn

if ! curl -fsS "$wharf_url/v1/health" >/dev/null 2>&1; then
    echo "quickstart: starting wharf serve (log: $qs_dir/wharf.log)"
    nohup target/release/wharf serve >"$qs_dir/wharf.log" 2>&1 &
    echo $! >"$qs_dir/wharf.pid"
    for _ in $(seq 1 300); do
        curl -fsS "$wharf_url/v1/health" >/dev/null 2>&1 && break
        kill -0 "$(cat "$qs_dir/wharf.pid")" 2>/dev/null || break
        sleep 0.1
    done
    curl -fsS "$wharf_url/v1/health" >/dev/null || {
        echo "quickstart: wharf serve did not start:" >&2
        cat "$qs_dir/wharf.log" >&2
        exit 1
    }
    grep -m1 "OCI runtime" "$qs_dir/wharf.log" || true
fi

echo
echo "\$ wharf deploy hello --image $registry_addr/hello:latest --contract fc"
wharf deploy hello --image "$registry_addr/hello:latest" --contract fc
echo "\$ wharf invoke hello --data '{\"name\":\"wharf\"}'"
wharf invoke hello --data '{"name":"wharf"}'
cat <<TXT

Wharf is running ($wharf_url, log $qs_dir/wharf.log). Try:
  wharf invoke hello --data '{"name":"you"}' --verbose
  wharf logs hello
  wharf ls
Stop everything with: scripts/quickstart.sh stop
TXT
