#!/usr/bin/env bash
# The intercepted path against the named listener, in one run: one proxy
# with both listeners, in a network namespace made for the run, its
# transparent listener behind mesh-proxy-init's real iptables REDIRECT. Load
# (meshctl bench, 1 connection x 100 streams) goes to a named listener on
# loopback, and to a cluster IP (10.96.0.10:80) that the rules redirect to
# the transparent listener; a fake control plane (bench/fake_control.py)
# resolves that address to the service. Rows alternate, ROUNDS times;
# printed: each row's proxy CPU per request and requests per second, their
# medians, and the intercepted row's ratio to the named one.
#
#   bench/intercept.sh [--rounds N] [--run-time 5s]
#
# Needs root, ip, iptables, and a Python with grpcio and grpcio-tools
# ($PYTHON, default target/interop-venv/bin/python, which scripts/test.sh
# makes). Binaries from $BIN_DIR (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
run_time=5s
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --run-time) run_time=$2; shift 2 ;;
    *) echo "bench/intercept.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=$(cd "${BIN_DIR:-target/release}" && pwd)
python=${PYTHON:-target/interop-venv/bin/python}
[ "$(id -u)" = 0 ] || { echo "bench/intercept.sh: needs root (network namespaces, iptables)" >&2; exit 2; }
for tool in stockdata meshctl mesh-proxy mesh-proxy-init; do
  [ -x "$bin/$tool" ] || { echo "bench/intercept.sh: no $bin/$tool; build first: cargo build --release" >&2; exit 2; }
done
"$python" -c 'import grpc, grpc_tools' 2>/dev/null ||
  { echo "bench/intercept.sh: $python lacks grpcio / grpcio-tools (scripts/test.sh makes target/interop-venv)" >&2; exit 2; }

ns=mbi$$
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip netns add "$ns"
in_ns() { ip netns exec "$ns" "$@"; }
in_ns ip link set lo up
# The cluster IP is routed out of a link of the namespace's own (a veth
# pair, both ends inside), so the app's connections to it pass the OUTPUT
# chain's REDIRECT (loopback is not redirected).
in_ns ip link add mbv0 type veth peer name mbv1
in_ns ip addr add 10.99.0.1/24 dev mbv0
in_ns ip link set mbv0 up
in_ns ip link set mbv1 up
in_ns ip route add 10.96.0.0/16 dev mbv0

wait_listening() {
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 100); do
    if in_ns bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench/intercept.sh: nothing listens on $1" >&2
  exit 1
}

replicas=()
for id in r1 r2; do
  port=$((20000 + RANDOM % 20000))
  # Started with `ip netns exec` itself (it execs the program), so that $!
  # is the program's pid.
  ip netns exec "$ns" env RUST_LOG=warn "$bin/stockdata" --listen "127.0.0.1:$port" --server-id "$id" >/dev/null &
  pids+=($!)
  wait_listening "127.0.0.1:$port"
  replicas+=("127.0.0.1:$port")
done
control=127.0.0.1:$((40000 + RANDOM % 10000))
ip netns exec "$ns" "$python" bench/fake_control.py "$control" 10.96.0.10:80 stockdata.bench.svc.cluster.local:80 "${replicas[@]}" >/dev/null &
pids+=($!)
wait_listening "$control"

ip netns exec "$ns" setpriv --reuid=2102 --regid=2102 --clear-groups env TOKIO_WORKER_THREADS=1 RUST_LOG=warn \
  "$bin/mesh-proxy" \
  --outbound-transparent 127.0.0.1:4140 \
  --outbound stockdata=127.0.0.1:4141 \
  --discover "stockdata=static:${replicas[0]};${replicas[1]}" \
  --destination "http://$control" \
  --admin 127.0.0.1:4191 >/dev/null &
proxy=$!
pids+=("$proxy")
wait_listening 127.0.0.1:4141
in_ns "$bin/mesh-proxy-init" --outbound-port 4140 --proxy-uid 2102 >/dev/null

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
declare -A results
for round in $(seq "$rounds"); do
  for row in named intercepted; do
    case $row in
      named) target=http://127.0.0.1:4141 ;;
      intercepted) target=http://10.96.0.10:80 ;;
    esac
    in_ns "$bin/meshctl" bench --target "$target" --streams 100 --requests 2000 --json >/dev/null
    before=$(ticks "$proxy")
    json=$(in_ns "$bin/meshctl" bench --target "$target" --streams 100 --duration "$run_time" --warmup 0 --json)
    after=$(ticks "$proxy")
    line=$(python3 -c '
import json, os, sys
r = json.loads(sys.argv[1])
failed = sum(r["errors"].values())
if failed:
    sys.exit(f"bench/intercept.sh: {failed} failed calls")
servers = sorted(r["servers"])
if len(servers) < 2:
    sys.exit(f"bench/intercept.sh: the calls reached {servers} only")
us = (int(sys.argv[2]) - int(sys.argv[3])) / os.sysconf("SC_CLK_TCK") * 1e6 / r["requests"]
rps = r["rps"]
print(f"{us:.2f} {rps:.0f}")
' "$json" "$after" "$before")
    echo "round $round  $row  ${line% *} µs CPU/request  ${line#* } requests/s"
    results[$row]+="$line;"
  done
done

echo
echo "medians over $rounds rounds of $run_time (1 connection × 100 streams, one hop, one proxy):"
python3 -c '
import statistics, sys
med = {}
for arg in sys.argv[1:]:
    row, rows = arg.split("=", 1)
    rows = [r.split() for r in rows.split(";") if r]
    med[row] = (statistics.median(float(r[0]) for r in rows), statistics.median(float(r[1]) for r in rows))
    print(f"  {row}: {med[row][0]:.2f} µs CPU/request, {med[row][1]:.0f} requests/s")
n, i = med["named"], med["intercepted"]
print(f"  intercepted / named: {i[1] / n[1]:.3f}x requests/s, {i[0] / n[0]:.3f}x CPU per request")
' "named=${results[named]}" "intercepted=${results[intercepted]}"
