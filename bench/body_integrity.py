#!/usr/bin/env python3
"""Bodies pass through a streamgate build unchanged: what a build on a patched Pingora must
show before it is benchmarked (docs/benchmarks.md, "The smallest change to Pingora").

Starts, on loopback only, an origin (Python's http.server) serving a sized body (3 MiB), a
chunked one (20 chunks of 1 B to 200 KB) and a close-delimited one (2 MiB), and the given
streamgate binary on a free port with the memory store; fetches each 10 times in turn over
one kept-alive client connection (new users, so each request opens a lease) and compares
each body's SHA-256. Exit 0 when all 30 match. The proxy it started is stopped by PID.

    python3 bench/body_integrity.py target/release/streamgate
"""

import hashlib
import http.client
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

random.seed(7)
SIZED = os.urandom(3 << 20)
CHUNKS = [os.urandom(random.randint(1, 200_000)) for _ in range(20)]
CLOSE = os.urandom(2 << 20)
WANT = {"sized": SIZED, "chunked": b"".join(CHUNKS), "close": CLOSE}


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def do_GET(self):
        kind = self.path.rsplit("/", 1)[-1]
        if kind == "sized":
            self.send_response(200)
            self.send_header("Content-Length", str(len(SIZED)))
            self.end_headers()
            self.wfile.write(SIZED)
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for c in CHUNKS:
                self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(0, len(CLOSE), 100_000):
                self.wfile.write(CLOSE[i:i + 100_000])
                self.wfile.flush()
            self.close_connection = True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    if not os.access(sys.argv[1], os.X_OK):
        sys.exit(f"{sys.argv[1]}: not an executable file (a streamgate build)")
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    port = free_port()
    d = tempfile.mkdtemp(prefix="sg-integrity-")
    conf = os.path.join(d, "streamgate.toml")
    with open(conf, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
                f'[upstream]\naddrs = ["127.0.0.1:{origin.server_address[1]}"]\n'
                '[streams]\nroutes = ["/watch"]\nlimit = 3\n[store]\nkind = "memory"\n')
    proc = subprocess.Popen([sys.argv[1], "--config", conf], stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 20
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                c.getresponse().read()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit("the proxy did not come up")
                time.sleep(0.1)
        bad = 0
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for n in range(30):
            kind = ("sized", "chunked", "close")[n % 3]
            c.request("GET", f"/watch/{kind}", headers={"Session-Id": f"u{n}"})
            r = c.getresponse()
            body = r.read()
            if r.status != 200 or hashlib.sha256(body).digest() != hashlib.sha256(WANT[kind]).digest():
                bad += 1
                print(f"mismatch: {kind}, status {r.status}, {len(body)} of {len(WANT[kind])} bytes")
        print(f"{30 - bad} of 30 bodies unchanged")
        sys.exit(1 if bad else 0)
    finally:
        proc.terminate()
        proc.wait()
        origin.shutdown()


if __name__ == "__main__":
    main()
