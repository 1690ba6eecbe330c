#!/usr/bin/env bash
# A/B of mesh-proxy builds: the proxy's CPU per request and the throughput at
# one hop, 1 connection x 100 streams (--streams), each build in turn, ROUNDS times, so
# that drift is shared. For judging one change to the hot path; the suite
# (bench/run.sh) is the comparison with other proxies.
#
#   bench/ab.sh [--rounds N] [--run-time 5s] [--streams 100] [--tap] PROXY_BINARY...
#   bench/ab.sh --h2load [--rounds N] [--requests N] [--streams 100] [--haproxy] PROXY_BINARY...
#   bench/ab.sh --instructions [--requests N] [--streams 100] PROXY_BINARY...
#
# The timed rounds' load is `meshctl bench` for the run time, or with
# --h2load N calls of h2load (default 10,000; 1 x 100, after a tenth as many
# of warm-up), which costs the two cores less than meshctl does, so that the
# proxy rather than the client limits each round. With --haproxy, HAProxy
# (bench/haproxy.cfg: one thread, HTTP/2 both ways, round robin) takes its
# turn in every round as the baseline.
#
# With --tap each build also runs with one tap attached (`curl -N` on its
# admin /tap, default filters and rate) for the measured run: the rows
# named BUILD+tap are the cost of tapping.
#
# With --instructions each build runs once under valgrind's callgrind and
# the figure is the instructions it executed per request over N calls
# (default 10,000; h2load, 1 x 100, after 2,000 calls of warm-up whose
# counts are zeroed): repeatable to about 0.2% whatever else the machine is
# doing, where the CPU time of single rounds moves by 10% here. It counts
# work, not time (a cache miss is one instruction): confirm a change's
# direction with the timed rounds. Needs valgrind and h2load.
#
# Copy each build aside first (cp target/release/mesh-proxy /tmp/before).
# The replicas and the load tool are stockdata and meshctl from $BIN_DIR
# (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3
run_time=5s
tap=false
instructions=false
h2load=false
haproxy=false
requests=10000
streams=100
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --run-time) run_time=$2; shift 2 ;;
    --tap) tap=true; shift ;;
    --instructions) instructions=true; shift ;;
    --h2load) h2load=true; shift ;;
    --haproxy) haproxy=true; shift ;;
    --requests) requests=$2; shift 2 ;;
    --streams) streams=$2; shift 2 ;;
    -*) echo "bench/ab.sh: unknown flag $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "usage: bench/ab.sh [--rounds N] [--run-time 5s | --h2load [--requests N] [--haproxy]] [--streams N] [--tap] PROXY_BINARY..." >&2; exit 2; }
for proxy in "$@"; do
  [ -x "$proxy" ] || { echo "bench/ab.sh: $proxy is not an executable" >&2; exit 2; }
done
bin=${BIN_DIR:-target/release}
for tool in stockdata meshctl; do
  [ -x "$bin/$tool" ] || { echo "bench/ab.sh: no $bin/$tool; build first: cargo build --release -p $tool" >&2; exit 2; }
done

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# Polls until ADDR accepts connections, for at most 10 s.
wait_listening() {
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench/ab.sh: nothing listens on $1" >&2
  exit 1
}

replicas=()
for id in r1 r2; do
  addr=127.0.0.1:$(free_port)
  RUST_LOG=warn "$bin/stockdata" --listen "$addr" --server-id "$id" >/dev/null &
  pids+=($!)
  wait_listening "$addr"
  replicas+=("$addr")
done

if [ "$instructions" = true ]; then
  for tool in valgrind callgrind_control h2load; do
    command -v "$tool" >/dev/null || { echo "bench/ab.sh: --instructions needs $tool (apt-get install valgrind nghttp2-client)" >&2; exit 2; }
  done
  scratch=$(mktemp -d)
  trap 'cleanup; rm -rf "$scratch"' EXIT
  # StockData.Stocks/Get {id: 1} in its gRPC frame.
  printf '\x00\x00\x00\x00\x02\x08\x01' >"$scratch/get.bin"
  load() {
    h2load -t 1 -c 1 -m "$streams" -n "$2" -d "$scratch/get.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' \
      "http://$1/StockData.Stocks/Get" | grep '^requests:'
  }
  echo "instructions per request, $requests calls, 1 connection x $streams streams, one hop:"
  for proxy in "$@"; do
    listen=127.0.0.1:$(free_port)
    out=$scratch/callgrind.out
    rm -f "$out"*
    TOKIO_WORKER_THREADS=1 RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$proxy" --outbound "stockdata=$listen" \
      --discover "stockdata=static:${replicas[0]};${replicas[1]}" \
      --admin "127.0.0.1:$(free_port)" >/dev/null 2>"$scratch/valgrind.log" &
    pid=$!
    pids+=("$pid")
    # Under valgrind the proxy starts some 50 times slower.
    for _ in $(seq 10); do
      if (exec 3<>"/dev/tcp/${listen%:*}/${listen##*:}") 2>/dev/null; then break; fi
      sleep 1
    done
    wait_listening "$listen"
    load "$listen" 2000 >/dev/null
    callgrind_control --zero "$pid" >/dev/null
    done_line=$(load "$listen" "$requests")
    callgrind_control --dump "$pid" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    case $done_line in
      *" $requests succeeded, 0 failed"*) ;;
      *) echo "bench/ab.sh: not every call succeeded: $done_line" >&2; exit 1 ;;
    esac
    total=$(awk '/^(summary|totals):/ { print $2 }' "$out.1" | sort -n | tail -1)
    echo "  $proxy: $((total / requests)) instructions/request ($total over $requests calls)"
  done
  exit 0
fi

# CPU ticks (utime + stime) of a process.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

variants=()
for proxy in "$@"; do
  variants+=("$proxy")
  if [ "$tap" = true ]; then variants+=("$proxy+tap"); fi
done
if [ "$haproxy" = true ]; then
  [ "$h2load" = true ] || { echo "bench/ab.sh: --haproxy is measured only with --h2load" >&2; exit 2; }
  command -v haproxy >/dev/null || { echo "bench/ab.sh: --haproxy needs haproxy (apt-get install haproxy)" >&2; exit 2; }
  variants+=(haproxy)
fi
if [ "$h2load" = true ]; then
  command -v h2load >/dev/null || { echo "bench/ab.sh: --h2load needs h2load (apt-get install nghttp2-client)" >&2; exit 2; }
  scratch=$(mktemp -d)
  trap 'cleanup; rm -rf "$scratch"' EXIT
  printf '\x00\x00\x00\x00\x02\x08\x01' >"$scratch/get.bin"
fi

# N calls of h2load, 1 x $streams, against ADDR; fails unless every call succeeded.
h2load_calls() {
  local out
  out=$(h2load -t 1 -c 1 -m "$streams" -n "$2" -d "$scratch/get.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$1/StockData.Stocks/Get")
  case $out in
    *" $2 succeeded, 0 failed"*) ;;
    *) echo "bench/ab.sh: not every call succeeded: $(grep '^requests:' <<<"$out")" >&2; exit 1 ;;
  esac
  awk '/^finished in/ { print $4 }' <<<"$out"
}

declare -A results
for round in $(seq "$rounds"); do
  for variant in "${variants[@]}"; do
    proxy=${variant%+tap}
    listen=127.0.0.1:$(free_port)
    admin=127.0.0.1:$(free_port)
    if [ "$variant" = haproxy ]; then
      sed -e "s/{{LISTEN}}/$listen/" -e "s/{{BIND_TLS}}//" \
        -e "s|{{SERVERS}}|    server r1 ${replicas[0]} proto h2\n    server r2 ${replicas[1]} proto h2|" \
        bench/haproxy.cfg >"$scratch/haproxy.cfg"
      haproxy -f "$scratch/haproxy.cfg" -db >/dev/null 2>&1 &
    else
      TOKIO_WORKER_THREADS=1 RUST_LOG=warn "$proxy" \
        --outbound "stockdata=$listen" \
        --discover "stockdata=static:${replicas[0]};${replicas[1]}" \
        --admin "$admin" >/dev/null &
    fi
    pid=$!
    pids+=("$pid")
    wait_listening "$listen"
    if [ "$h2load" = true ]; then
      h2load_calls "$listen" $((requests / 10)) >/dev/null
      before=$(ticks "$pid")
      rps=$(h2load_calls "$listen" "$requests")
      after=$(ticks "$pid")
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      line=$(python3 -c '
import os, sys
ticks = int(sys.argv[1]) - int(sys.argv[2])
us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / int(sys.argv[3])
print(f"{us:.2f} {float(sys.argv[4]):.0f}")
' "$after" "$before" "$requests" "$rps")
      echo "round $round  $variant  ${line% *} µs CPU/request  ${line#* } requests/s"
      results[$variant]+="$line;"
      continue
    fi
    # Warm up (connections, caches) outside the measured window.
    "$bin/meshctl" bench --target "http://$listen" --streams "$streams" --requests 2000 --json >/dev/null
    tapping=
    if [ "$variant" != "$proxy" ]; then
      curl -sN "http://$admin/tap" >/dev/null &
      tapping=$!
      pids+=("$tapping")
      sleep 0.2
    fi
    before=$(ticks "$pid")
    json=$("$bin/meshctl" bench --target "http://$listen" --streams "$streams" --duration "$run_time" --warmup 0 --json)
    after=$(ticks "$pid")
    if [ -n "$tapping" ]; then kill "$tapping" 2>/dev/null || true; fi
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    line=$(python3 -c '
import json, os, sys
r = json.loads(sys.argv[1])
failed = sum(r["errors"].values())
if failed:
    sys.exit(f"bench/ab.sh: {failed} failed calls")
ticks = int(sys.argv[2]) - int(sys.argv[3])
us = ticks / os.sysconf("SC_CLK_TCK") * 1e6 / r["requests"]
rps = r["rps"]
print(f"{us:.2f} {rps:.0f}")
' "$json" "$after" "$before")
    echo "round $round  $variant  ${line% *} µs CPU/request  ${line#* } requests/s"
    results[$variant]+="$line;"
  done
done

echo
if [ "$h2load" = true ]; then
  echo "medians over $rounds rounds of $requests h2load calls (1 connection × $streams streams, one hop):"
else
  echo "medians over $rounds rounds of $run_time (1 connection × $streams streams, one hop):"
fi
for variant in "${variants[@]}"; do
  python3 -c '
import statistics, sys
rows = [r.split() for r in sys.argv[2].split(";") if r]
us = statistics.median(float(r[0]) for r in rows)
rps = statistics.median(float(r[1]) for r in rows)
print(f"  {sys.argv[1]}: {us:.2f} µs CPU/request, {rps:.0f} requests/s")
' "$variant" "${results[$variant]}"
done
