#!/usr/bin/env python3
"""Memory of held streams: what 8,192 HTTP/2 streams whose request head
arrived and whose body never does cost a mesh-proxy and the StockData
replica behind it, and whether the proxy gives it back once
--stream-idle-timeout resets them (issue 19).

    cargo build --release --workspace --bins
    bench/held-streams.py [--streams 8192] [--idle-timeout 5s] [--rounds 2] [--settle 10.5]

Starts one replica and one proxy (one worker) from target/release on
loopback ports, warms them up with 2,000 calls, then opens the streams over
32 connections (256 each, the proxy's per-connection limit) with raw HTTP/2
frames and prints each process's resident memory (VmRSS) at the baseline,
while the streams are held, after the timeout and after their connections
closed; then again (--rounds), since memory an allocator keeps for reuse
looks like a leak after one round and does not grow after two. No dependencies beyond
Python's standard library.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

from rawh2 import BIN, PREFACE, call_head, frame, free_port, refused, wait_listening


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def held_connection(port, streams):
    """A connection with `streams` request heads sent, no END_STREAM."""
    conn = socket.create_connection(("127.0.0.1", port))
    head = call_head()
    out = bytearray(PREFACE)
    out += frame(0x4, 0, 0, b"")  # SETTINGS
    for n in range(streams):
        out += frame(0x1, 0x4, 1 + 2 * n, head)  # HEADERS, END_HEADERS only
    conn.sendall(out)
    conn.setblocking(False)
    return conn


def drain(conns):
    """Reads what the proxy sent, so that its writes never block."""
    for conn in conns:
        try:
            while conn.recv(65536):
                pass
        except (BlockingIOError, ConnectionError):
            pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=8192)
    parser.add_argument("--idle-timeout", default="5s")
    parser.add_argument("--rounds", type=int, default=2,
                        help="hold and reset this many times, to tell reuse from a leak")
    parser.add_argument("--settle", type=float, default=10.5,
                        help="seconds to wait before reading memory after the reset and after "
                        "the close: mesh-proxy returns freed memory every 10 s (with glibc)")
    args = parser.parse_args()
    per_connection = 256
    connections = (args.streams + per_connection - 1) // per_connection
    idle_seconds = float(args.idle_timeout.rstrip("s"))

    replica_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    procs = []
    try:
        env = dict(os.environ, RUST_LOG="error")
        replica = subprocess.Popen(
            [f"{BIN}/stockdata", "--listen", f"127.0.0.1:{replica_port}", "--server-id", "r1"],
            env=env, stdout=subprocess.DEVNULL)
        procs.append(replica)
        wait_listening(replica_port)
        proxy = subprocess.Popen(
            [f"{BIN}/mesh-proxy", "--outbound", f"stockdata=127.0.0.1:{proxy_port}",
             "--discover", f"stockdata=static:127.0.0.1:{replica_port}",
             "--admin", f"127.0.0.1:{admin_port}",
             "--stream-idle-timeout", args.idle_timeout],
            env=dict(env, TOKIO_WORKER_THREADS="1"), stdout=subprocess.DEVNULL)
        procs.append(proxy)
        wait_listening(proxy_port)
        warm = subprocess.run(
            [f"{BIN}/meshctl", "bench", "--target", f"http://127.0.0.1:{proxy_port}",
             "--streams", "100", "--requests", "2000", "--json"],
            check=True, capture_output=True, text=True)
        if sum(json.loads(warm.stdout)["errors"].values()):
            sys.exit("held-streams.py: the warm-up had failed calls")
        time.sleep(1)
        base = (rss_kib(proxy.pid), rss_kib(replica.pid))

        rows = []
        for _ in range(args.rounds):
            started = time.monotonic()
            conns = []
            left = args.streams
            for _ in range(connections):
                conns.append(held_connection(proxy_port, min(per_connection, left)))
                left -= per_connection
            time.sleep(min(2.0, idle_seconds / 2))
            drain(conns)
            held = (rss_kib(proxy.pid), rss_kib(replica.pid))

            # Past the timeout (checked every quarter of it) and a second,
            # and the proxy's next return of freed memory (every 10 s).
            time.sleep(max(0.0, started + idle_seconds * 1.25 + 1.0 - time.monotonic()))
            drain(conns)
            time.sleep(args.settle)
            after = (rss_kib(proxy.pid), rss_kib(replica.pid))
            for conn in conns:
                conn.close()
            time.sleep(args.settle)
            closed = (rss_kib(proxy.pid), rss_kib(replica.pid))
            rows.append((held, after, closed))
        reset = refused(admin_port, "stream_idle_timeout")
        if reset != args.streams * args.rounds:
            sys.exit(f"held-streams.py: {reset:.0f} streams reset for the idle timeout, "
                     f"not {args.streams * args.rounds}")

        print(f"{args.streams} held streams over {connections} connections, "
              f"--stream-idle-timeout {args.idle_timeout}; VmRSS in MB:")
        print(f"{'':>12} {'baseline':>9} " + " ".join(
            f"{'held':>9} {'reset':>9} {'closed':>9}" for _ in rows))
        for name, i in (("mesh-proxy", 0), ("stockdata", 1)):
            mb = [base[i]] + [m[i] for row in rows for m in row]
            print(f"{name:>12} " + " ".join(f"{v / 1024:9.1f}" for v in mb))
        print(f"streams reset for the idle timeout: {reset:.0f}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    main()
