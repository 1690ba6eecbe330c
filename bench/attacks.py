#!/usr/bin/env python3
"""A well-behaved client beside each HTTP/2 attack on one mesh-proxy (issue
19): its throughput and p99 alone and beside a flood of frames that carry
nothing (WINDOW_UPDATE, PING, SETTINGS, PRIORITY, empty DATA) and a Rapid
Reset, and how many attacking connections the proxy closed.

    cargo build --release --workspace --bins
    bench/attacks.py [--run-time 5] [--rounds 2]

One StockData replica and one proxy (one worker) from target/release on
loopback ports; the good client is `meshctl bench` (10 streams on one
connection); each attacker is a thread writing raw HTTP/2 frames as fast as
it can, reconnecting whenever the proxy closes its connection. The rows
alternate with baseline rows so that drift is shared. The attacker and the
good client share the machine's cores with the proxy, so the ratios are
upper bounds of what the proxy itself loses. Standard library only.
"""

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading

from rawh2 import BIN, PREFACE, call_head, frame, free_port, refused, wait_listening


def batch(kind, first_stream):
    """About 1,000 frames of one attack, and how many frames that is."""
    if kind == "window_update":
        return frame(0x8, 0, 0, struct.pack(">I", 1)) * 1000, 1000
    if kind == "ping":
        return frame(0x6, 0, 0, b"\0" * 8) * 1000, 1000
    if kind == "settings":
        return frame(0x4, 0, 0) * 1000, 1000
    if kind == "priority":
        return frame(0x2, 0, 1, struct.pack(">IB", 0, 15)) * 1000, 1000
    if kind == "empty_data":
        # On an open stream: the first HEADERS opens stream 1.
        return frame(0x0, 0, 1) * 1000, 1000
    if kind == "rapid_reset":
        head = call_head()
        out = bytearray()
        for n in range(100):
            stream = first_stream + 2 * n
            out += frame(0x1, 0x4, stream, head) + frame(0x3, 0, stream, struct.pack(">I", 8))
        return bytes(out), 200
    raise ValueError(kind)


class Attacker(threading.Thread):
    def __init__(self, kind, port):
        super().__init__(daemon=True)
        self.kind, self.port = kind, port
        self.stop = threading.Event()
        self.per_connection = []  # frames written on each connection the proxy closed

    def run(self):
        while not self.stop.is_set():
            sent = 0
            try:
                # From a source of its own, as another pod would be: the
                # proxy refuses new connections from a source it caught.
                conn = socket.create_connection(("127.0.0.1", self.port),
                                                source_address=("127.0.0.2", 0))
                conn.settimeout(2)
                hello = PREFACE + frame(0x4, 0, 0)
                if self.kind == "empty_data":
                    hello += frame(0x1, 0x4, 1, call_head())
                conn.sendall(hello)
                stream = 1
                while not self.stop.is_set():
                    data, frames = batch(self.kind, stream)
                    stream += 200
                    try:
                        conn.sendall(data)
                    except socket.timeout:
                        continue  # the proxy is slow to read, not gone
                    sent += frames
                conn.close()
            except OSError:
                self.per_connection.append(sent)


def good_client(port, seconds):
    out = subprocess.run(
        [f"{BIN}/meshctl", "bench", "--target", f"http://127.0.0.1:{port}", "--streams", "10",
         "--duration", f"{seconds:g}s", "--warmup", "0", "--json"],
        check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    return result["rps"], result["latency_us"]["p99"], sum(result["errors"].values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-time", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    attacks = ["window_update", "ping", "settings", "priority", "empty_data", "rapid_reset"]

    replica_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    procs = []
    try:
        env = dict(os.environ, RUST_LOG="error")
        procs.append(subprocess.Popen(
            [f"{BIN}/stockdata", "--listen", f"127.0.0.1:{replica_port}", "--server-id", "r1"],
            env=env, stdout=subprocess.DEVNULL))
        wait_listening(replica_port)
        procs.append(subprocess.Popen(
            [f"{BIN}/mesh-proxy", "--outbound", f"stockdata=127.0.0.1:{proxy_port}",
             "--discover", f"stockdata=static:127.0.0.1:{replica_port}",
             "--admin", f"127.0.0.1:{admin_port}"],
            env=dict(env, TOKIO_WORKER_THREADS="1"), stdout=subprocess.DEVNULL))
        wait_listening(proxy_port)
        good_client(proxy_port, 1)  # warm-up

        rows = {name: [] for name in ["alone"] + attacks}
        closes = {name: [] for name in attacks}
        failed = 0
        for _ in range(args.rounds):
            for kind in attacks:
                rps, p99, errors = good_client(proxy_port, args.run_time)
                rows["alone"].append((rps, p99))
                failed += errors
                attacker = Attacker(kind, proxy_port)
                attacker.start()
                rps, p99, errors = good_client(proxy_port, args.run_time)
                attacker.stop.set()
                attacker.join()
                rows[kind].append((rps, p99))
                closes[kind].extend(attacker.per_connection)
                failed += errors
        if failed:
            sys.exit(f"attacks.py: the good client had {failed} failed calls")

        base_rps = statistics.median(r for r, _ in rows["alone"])
        base_p99 = statistics.median(p for _, p in rows["alone"])
        print(f"good client: 1 connection x 10 streams, {args.run_time:g} s per row, "
              f"medians of {args.rounds} rounds")
        print(f"{'beside':>14} {'req/s':>8} {'ratio':>6} {'p99 µs':>8} {'ratio':>6} "
              f"{'attacker connections ended':>27}")
        print(f"{'nothing':>14} {base_rps:8.0f} {1:6.2f} {base_p99:8.0f} {1:6.2f}")
        for kind in attacks:
            rps = statistics.median(r for r, _ in rows[kind])
            p99 = statistics.median(p for _, p in rows[kind])
            print(f"{kind:>14} {rps:8.0f} {rps / base_rps:6.2f} {p99:8.0f} {p99 / base_p99:6.2f} "
                  f"{len(closes[kind]):27d}")
        print("closed by the proxy and counted: " + ", ".join(
            f"{reason} {refused(admin_port, reason):.0f}"
            for reason in ("too_many_empty_frames", "too_many_resets", "penalized")))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    main()
