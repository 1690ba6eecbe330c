#!/usr/bin/env bash
# The one command that runs every test, as CI does: `scripts/test.sh`.
#
# It installs what the tests need when it is missing:
#   - a Python venv with grpcio and grpcio-tools (interop tests) and
#     kubernetes-validate (manifest checks), at target/interop-venv;
#   - Debian's chromium and chromium-driver (the dashboard's browser tests);
#   - iproute2, iptables and curl (the traffic redirection test, which also
#     needs root: it builds network namespaces).
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

step "network tools (iproute2, iptables, curl: the traffic redirection test)"
if ! command -v ip >/dev/null || ! command -v iptables-restore >/dev/null || ! command -v curl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables curl >/dev/null
  fi
fi
if command -v ip >/dev/null && command -v iptables-restore >/dev/null && command -v curl >/dev/null; then
  iptables-restore --version
elif [ "$ci" = true ]; then
  echo "iproute2, iptables and curl are required with CI=true and could not be installed" >&2
  exit 1
else
  echo "ip, iptables-restore or curl is missing: the redirection test will say SKIPPED"
fi

if [ "$ci" = true ]; then
  step "cargo fmt --check"
  cargo fmt --all --check
  step "cargo clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

step "cargo test"
cargo test --workspace --locked
