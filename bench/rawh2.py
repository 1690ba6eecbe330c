"""What bench/attacks.py and bench/held-streams.py share: loopback ports,
raw HTTP/2 frames (RFC 9113) and a StockData call's header block (HPACK,
RFC 7541), and reading a proxy's refusal counters. Standard library only.
"""

import os
import socket
import struct
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN_DIR", os.path.join(ROOT, "target", "release"))
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{os.path.basename(sys.argv[0])}: nothing listens on {port}")


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(index, value):
    """A field as a literal without indexing, its name from the static table."""
    value = value.encode()
    assert index < 15 and len(value) < 127
    return bytes([index, len(value)]) + value


def _literal_name(name, value):
    name, value = name.encode(), value.encode()
    return bytes([0, len(name)]) + name + bytes([len(value)]) + value


def call_head(authority="stockdata"):
    """The header block of a StockData Get call: POST (static 3), http
    (static 6), then literals."""
    return (
        bytes([0x83, 0x86])
        + _literal(4, "/StockData.Stocks/Get")
        + _literal(1, authority)
        + _literal_name("content-type", "application/grpc")
        + _literal_name("te", "trailers")
    )


def refused(admin_port, reason):
    """The proxy's mesh_refused_total for `reason`, both directions."""
    with socket.create_connection(("127.0.0.1", admin_port)) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := s.recv(65536):
            text += chunk
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith("mesh_refused_total{") and f'reason="{reason}"' in line)
