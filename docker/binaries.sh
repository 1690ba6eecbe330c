#!/usr/bin/env bash
# Builds the binaries the images ship, and prints the directory they are in:
# `docker/binaries.sh`. Used by docker/build.sh, and by bench/run.sh so that
# the benchmark measures the very build a pod runs.
#
# Statically linked against glibc (static-pie): a FROM scratch image needs no
# loader or libraries, and the proxy keeps glibc's allocator. Measured on
# mesh-proxy, one hop, 1 x 100 (docs/benchmarks.md): musl's allocator cost
# about 1.4 x the CPU per call (much of it system time, returning and
# mapping memory again); linking glibc statically costs nothing per call and
# leaves out the shared libraries' pages (about 1 MB less resident). Name
# resolution needs no NSS module: glibc 2.34 and later resolve from
# /etc/hosts and DNS inside libc itself.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
# `release` unless STOCKKUBE_IMAGE_PROFILE names another cargo profile: the
# tests ask for `images-test` (Cargo.toml), which skips LTO.
profile=${STOCKKUBE_IMAGE_PROFILE:-release}
# With --target the flags apply to the shipped binaries only, not to build
# scripts and proc-macros, which must stay dynamic.
build() {
  RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile "$profile" --locked --target "$target" "$@" >&2
}
build -p stockdata -p stockweb -p mesh-controller -p mesh-dashboard -p mesh-runtime
# The proxy on its own: cargo gives the crates one build shares the union
# of the features its packages ask for, and the controller's Kubernetes
# client turns on logging in tracing and rustls, which the proxy would then
# pay for on every request (1.03 x the instructions per call measured,
# docs/benchmarks.md). Built apart, its dependencies have only its features.
build -p mesh-proxy
echo "${CARGO_TARGET_DIR:-target}/$target/$profile"
