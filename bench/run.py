#!/usr/bin/env python3
"""Side-by-side benchmark: streamgate vs nginx doing the same job, in one run.

Starts, on loopback only:
  - an origin (nginx, pinned to the load core) serving small bodies, 1 MiB segments, and
    slow (rate-limited) streams;
  - each proxy under test, alone on its own core (`taskset -c 0`): streamgate (memory
    store), streamgate with the limiter off (plain passthrough), streamgate on a Redis
    store (when redis-server is installed), a bare Pingora passthrough as the framework's
    own reference (examples/bare_pingora.rs: no filters, no timeouts; its /health goes to
    the origin), streamgate with JWT identity (ES256 tokens made with the openssl CLI; on
    the JWT players shape only), and an nginx peer configured for the same job (limit_conn_zone
    $http_session_id, limit_conn 3, limit_conn_status 401, 400 without the header, /health
    answered locally) and tuned for segments as an operator would (64 KiB proxy buffers;
    the untuned peer, 4-8 KiB, is the extra row `nginx-untuned`);
  - over HTTPS (TLS 1.3, AES-256-GCM, one P-256 certificate for both): the same nginx peer
    (`nginx-https`, also HTTP/2) and a `--features tls` streamgate (`streamgate-https`,
    built into target/tls), on the HTTPS shapes, the HTTP/2 segment shape (h2load) and
    the held streams;
  - wrk (pinned with the origin to the other core) with the same bounded load for each.

Every run (one shape on one target) gets a fresh proxy process, so no run pays for what an
earlier one left (the leases random users open expire a TTL later; --warm keeps one
process per target for the whole run instead). Rounds alternate the targets.

Prints a table of medians (with min..max over rounds), streamgate/nginx ratios of req/s,
p99 and CPU per request (the proxy's user + system time, nginx's worker included: less
swayed by a noisy neighbour than req/s), and writes it as Markdown to bench/results.md.

    python3 bench/run.py                 # 3 rounds of 5 s per shape
    python3 bench/run.py --rounds 5 --duration 10 --held 5000
    python3 bench/run.py --held-only --held 9000   # held streams only; 2 files per stream
    python3 bench/run.py --shapes 3 --conns 3000 --store-timeout 100ms --held 0   # overload
    python3 bench/run.py --shapes 4,9,10,11 --only nginx,nginx-untuned,streamgate,nginx-https,streamgate-https
    python3 bench/run.py --shapes 4,10 --held 0 --strace   # syscalls per 1 MiB segment too
    python3 bench/run.py --shapes 4,10 --held 0 --perf     # where the cycles go (bench/perf-*.txt)
    python3 bench/run.py --shapes 4,10 --held 0 --only nginx,streamgate,nginx-https,streamgate-https \
        --ab tls=target/tls/release/streamgate --ab patched=PATH   # other builds, same run

Needs: nginx, wrk, nghttp2-client (h2load), openssl (Debian packages), cargo; optional
redis-server, strace (--strace), linux-perf (--perf). Every process it starts
is stopped by PID at the end; the load is bounded by --duration and --rounds.
"""

import argparse
import base64
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROXY_CORE = "0"
LOAD_CORE = "1"

PORTS = {
    "origin": 18080,
    "streamgate": 18001,
    "passthrough": 18003,
    "redis-store": 18004,
    "bare-pingora": 18005,
    "access-log": 18006,
    "jwt": 18007,
    "nginx": 18002,
    "nginx-untuned": 18008,
    "nginx-https": 18009,
    "streamgate-https": 18010,
    "redis": 18379,
}
METRICS = {"streamgate": 19001, "passthrough": 19003, "redis-store": 19004, "access-log": 19006,
           "jwt": 19007, "streamgate-https": 19010}
# Builds compared in the same run (--ab LABEL=BINARY): each gets a plain and an HTTPS
# target, on ports from here up.
AB_PORTS = 18020
AB_METRICS = 19020
# Targets served over HTTPS (TLS 1.3, the same certificate and cipher on both); the others
# are plain HTTP. Each shape runs on the targets of its own scheme, and its ratios are
# against the nginx of that scheme.
HTTPS_TARGETS = {"nginx-https", "streamgate-https"}
BASE = {"http": "nginx", "https": "nginx-https", "h2": "nginx-https"}
# nginx tuned for segments, as an operator serving video would set it (issue #17): 64 KiB
# reads from the origin instead of the 4-8 KiB defaults. The untuned peer is kept as a row.
NGINX_TUNED = "proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;"
# The jwt target verifies ES256 tokens signed with this key (made in main's directory).
JWT_KEY = None

started = []


def start(cmd, core, **kw):
    p = subprocess.Popen(
        ["taskset", "-c", core] + cmd,
        stdout=subprocess.DEVNULL,
        stderr=kw.pop("stderr", subprocess.DEVNULL),
        **kw,
    )
    started.append(p)
    return p


def stop_all():
    for p in reversed(started):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_port(port, path="/health", timeout=20, scheme="http"):
    deadline = time.time() + timeout
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if path is None:
                    return
                urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{path}", timeout=1,
                                       context=insecure if scheme == "https" else None).read()
                return
        except Exception:
            time.sleep(0.05)
    sys.exit(f"port {port} did not come up")


def rss_kib(pid):
    """RSS of a process and its children (nginx's workers), in KiB."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# What both nginx instances (origin and peer) share: one worker, no access log, long
# keep-alive. Braces are doubled because the whole config is formatted again later.
NGINX_PRELUDE = """
worker_processes 1;
daemon off;
pid {{dir}}/{name}.pid;
error_log {{dir}}/{name}-error.log warn;
events {{{{ worker_connections {{conns}}; }}}}
worker_rlimit_nofile {{nofile}};
http {{{{
  access_log off;
  keepalive_requests 1000000;
"""

ORIGIN_CONF = NGINX_PRELUDE.format(name="origin") + """  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    root {dir}/www;
    location = /watch {{ default_type text/plain; return 200 "ok\\n"; }}
    location = /watch/seg {{ try_files /seg.bin =404; }}
    location = /watch/live.m3u8 {{ types {{ }} default_type application/vnd.apple.mpegurl; try_files /live.m3u8 =404; }}
    location = /watch/live.bin {{ types {{ }} default_type application/octet-stream; try_files /live.m3u8 =404; }}
    location = /watch/slow {{ limit_rate 512; try_files /seg.bin =404; }}
    location = /h2/seg {{ try_files /seg.bin =404; }}
    # For the bare Pingora reference, which forwards everything, /health included.
    location = /health {{ default_type application/json; return 200 '{{"status":"UP"}}'; }}
  }}
}}
"""

NGINX_PEER_CONF = NGINX_PRELUDE.format(name="peer") + """  limit_conn_zone $http_session_id zone=streams:64m;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port} {listen_extra} reuseport backlog=4096;
    {tls}
    location = /health {{ default_type application/json; return 200 '{{"status":"UP"}}'; }}
    # HTTP/2 segments without the limiter (h2load sends one Session-Id on every stream).
    location /h2/ {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      {buffers}
    }}
    location /watch {{
      if ($http_session_id = "") {{
        return 400 '{{"error":"session_id_required","message":"the Session-Id header is required"}}';
      }}
      limit_conn streams 3;
      limit_conn_status 401;
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      {buffers}
    }}
  }}
}}
"""

STREAMGATE_CONF = """
[server]
listen = ["127.0.0.1:{port}"]
threads = {threads}
work_stealing = {stealing}
{server_extra}
[upstream]
addrs = ["127.0.0.1:{origin}"]
keepalive_pool_size = 1024
[identity]
# The players' Lua tells answers apart by the echoed Session-Id (wrk's response() does not
# say which request it answers); the product's default is not to echo it.
echo = true
{identity_extra}
[streams]
routes = [{routes}]
limit = 3
lease_ttl = "60s"
[store]
{store}
[metrics]
listen = "127.0.0.1:{metrics}"
[log]
access = "{access}"
{tls_extra}
"""

LUA_RANDOM_USERS = """
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16))
request = function()
  return wrk.format("GET", "{path}", {{["Session-Id"] = "u" .. math.random(1, {users})}})
end
"""


LUA_PLAYERS = """
-- Players: as many as there are connections, taken in turn, so each has about one request
-- in flight (nginx's limit_conn, which counts requests in progress, then refuses none, and
-- both proxies do the same work). A player opens a stream once, then fetches segments on
-- it: streamgate echoes Session-Id and Stream-Id, and the player sends the Stream-Id back
-- (streamgate renews the lease; nginx just forwards the extra header). JWT players (the
-- JWT players shape) also send their own ES256 token, whose sub is the same name: the jwt
-- target identifies them by it, the others by the header, so every target does the same
-- work but the token's verification.
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16))
local base = {base}
local players = {players}
local tokens = {{ {tokens} }}
local turn = 0
local sid = {{}}
request = function()
  turn = turn % players + 1
  local user = base .. turn
  local h = {{["Session-Id"] = user}}
  if tokens[turn] then h["Authorization"] = "Bearer " .. tokens[turn] end
  if sid[user] then h["Stream-Id"] = sid[user] end
  return wrk.format("GET", "{path}", h)
end
response = function(status, headers, body)
  local user = headers["Session-Id"] or headers["session-id"]
  local s = headers["Stream-Id"] or headers["stream-id"]
  if user and s then sid[user] = s end
end
"""

LUA_PLAYERS_URL = """
-- Players as above, but as real players do it: the stream id comes back in the URL
-- (`?sg_stream=`, from a rewritten manifest or the manifest's redirect), never in a header.
math.randomseed(os.time() + tonumber(tostring({{}}):sub(8), 16))
local base = "player" .. math.random(1, 1000000000) .. "-"
local players = {players}
local turn = 0
local last = nil
local sid = {{}}
request = function()
  turn = turn % players + 1
  last = base .. turn
  local path = "{path}"
  if sid[last] then path = path .. "?sg_stream=" .. sid[last] end
  return wrk.format("GET", path, {{["Session-Id"] = last}})
end
response = function(status, headers, body)
  local s = headers["Stream-Id"] or headers["stream-id"]
  local loc = headers["Location"] or headers["location"]
  if not s and loc then s = string.match(loc, "sg_stream=([%w-]+)") end
  local user = headers["Session-Id"] or headers["session-id"]
  if s and user then sid[user] = s end
end
"""


def b64u(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def es256_raw(der):
    """An ECDSA signature from openssl (DER SEQUENCE of r, s) as JWS wants it: r || s."""
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(32, b"\0")
        i += 2 + n
    return out


def es256_tokens(subs):
    """One token per sub, signed with JWT_KEY by the openssl CLI, valid for an hour."""
    header = b64u(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}))
    exp = int(time.time()) + 3600
    tokens = []
    for sub in subs:
        signing = f"{header}.{b64u(json.dumps({'sub': sub, 'exp': exp}))}"
        der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", JWT_KEY], input=signing.encode(),
                             capture_output=True, check=True).stdout
        tokens.append(f"{signing}.{b64u(es256_raw(der))}")
    return tokens


def h2load(port, path, conns, duration):
    """HTTP/2 over TLS (ALPN h2), one stream per connection at a time; h2load reports the
    mean latency, not percentiles (the mean goes in the p50 column, p99 is left out)."""
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "h2load", "-D", str(duration), "-c", str(conns), "-m", "1",
         "-t", "1", "-H", "Session-Id: h2bench", f"https://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    r = {"rps": 0.0, "p50": 0.0, "p99": None, "mbs": 0.0, "non2xx": 0, "errors": 0, "requests": 0}
    if m := re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s, ([\d.]+)(\w+)/s", out):
        r["rps"] = float(m.group(1))
        r["mbs"] = to_mb(m.group(2) + m.group(3))
    if m := re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out):
        r["requests"] = int(m.group(2))
        r["errors"] = int(m.group(3)) + int(m.group(4))
    if m := re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out):
        r["non2xx"] = sum(int(x) for x in m.groups())
    if m := re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+\w+)", out):
        r["p50"] = to_ms(m.group(1))
    return r


READS = ("read", "readv", "recvfrom", "recvmsg")
WRITES = ("write", "writev", "sendto", "sendmsg")


def with_children(pid):
    """A process and its children (nginx's worker does nginx's work), as strings."""
    pids = [str(pid)]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += f.read().split()
    except OSError:
        pass
    return pids


def strace_per_request(pid, load):
    """Run `load()` (returns wrk's result) with strace counting the syscalls of process
    `pid` (all its threads and children); returns calls per request by syscall family, and
    bytes per read/write call (the segment bytes over the calls that moved them: one
    read and one write per request are the request itself). strace slows the proxy; the
    counts, not the speed, are the figure."""
    out = tempfile.NamedTemporaryFile("w", suffix=".strace", delete=False).name
    pids = with_children(pid)
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", out] + sum((["-p", p] for p in pids), []),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    r = load()
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    calls = {}
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
    os.unlink(out)
    n = max(r["requests"], 1)
    reads = sum(calls.get(c, 0) for c in READS)
    writes = sum(calls.get(c, 0) for c in WRITES)
    seg = 1 << 20
    return {
        "requests": r["requests"],
        "total": sum(calls.values()) / n,
        "reads": reads / n,
        "writes": writes / n,
        "epoll": sum(v for c, v in calls.items() if c.startswith("epoll")) / n,
        "futex": calls.get("futex", 0) / n,
        "kib_per_read": seg / 1024 / max(reads / n - 1, 1e-9),
        "kib_per_write": seg / 1024 / max(writes / n - 1, 1e-9),
        "top": sorted(calls.items(), key=lambda kv: -kv[1])[:6],
    }


def perf_top(pid, load, out_path):
    """Run `load()` with `perf record` sampling process `pid`; write the flat profile
    (symbols over 1 % of samples) to out_path and return the shares below. Where the
    proxy's cycles go, not a rate."""
    data = out_path + ".data"
    pids = with_children(pid)  # nginx: its worker does the work
    rec = subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-p", ",".join(pids), "-o", data],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    load()
    rec.send_signal(signal.SIGINT)
    rec.wait(timeout=60)
    rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,symbol",
                          "--percent-limit", "1", "-g", "none"], capture_output=True, text=True).stdout
    # Who calls the copies: the callers of memmove, three frames deep.
    calls = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "symbol",
                            "--symbol-filter", "memmove", "-g", "caller,0.5,callee,function,percent",
                            "--max-stack", "12"], capture_output=True, text=True).stdout
    # Shares of the samples: userspace, the copies, our own code (functions whose path is
    # streamgate's; a Pingora function monomorphized over our types,
    # `pingora_proxy::...<streamgate::...>`, is Pingora's) and the lease store's moka.
    flat = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "symbol",
                           "-g", "none", "--percent-limit", "0"], capture_output=True, text=True).stdout
    share = {"user": 0.0, "memmove": 0.0, "ours": 0.0, "moka": 0.0}
    for line in flat.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[\.\]\s+(\S.*)", line)
        if not m:
            continue
        pct, sym = float(m.group(1)), m.group(2)
        share["user"] += pct
        share["memmove"] += pct if "memmove" in sym or "memcpy" in sym else 0.0
        share["ours"] += pct if sym.lstrip("<").startswith("streamgate::") else 0.0
        share["moka"] += pct if sym.lstrip("<").startswith("moka::") else 0.0
    with open(out_path, "w") as f:
        f.write(f"# userspace {share['user']:.1f} %, memmove/memcpy {share['memmove']:.1f} %, "
                f"streamgate's own functions {share['ours']:.2f} %, moka {share['moka']:.2f} % of the samples\n\n")
        f.write(rep + "\n\n# callers of memmove\n" + calls)
    os.unlink(data)
    return share


def wrk(port, path, users, conns, duration, threads=1, scheme="http"):
    if users == -2:
        base = f"jwtplayer{os.getpid()}-{time.monotonic_ns()}-"
        tokens = es256_tokens([f"{base}{n}" for n in range(1, conns + 1)])
        script_text = LUA_PLAYERS.format(path=path, players=conns, base=f'"{base}"',
                                         tokens=", ".join(f'"{t}"' for t in tokens))
    else:
        random_base = '"player" .. math.random(1, 1000000000) .. "-"'
        script_text = (LUA_PLAYERS.format(path=path, players=conns, base=random_base, tokens="")
                       if users == 0
                       else LUA_PLAYERS_URL.format(path=path, players=conns) if users == -1
                       else LUA_RANDOM_USERS.format(path=path, users=users))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script_text)
        script = f.name
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "--latency", "-t", str(threads), "-c", str(conns),
         "-d", f"{duration}s", "--timeout", "10s", "-s", script, f"{scheme}://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    os.unlink(script)
    return parse_wrk(out)


def cpu_seconds(pid):
    """User + system CPU time a process (all its threads) and its children (nginx's worker)
    have used so far."""
    total = 0
    pids = with_children(pid)
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n / 1000 if unit == "us" else n * 1000 if unit == "s" else n


def to_mb(v):
    m = re.match(r"([\d.]+)([KMG]?B)", v)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"B": 1e-6, "KB": 1.024e-3, "MB": 1.048576, "GB": 1073.741824}[unit]


def parse_wrk(out):
    r = {"rps": 0.0, "p50": 0.0, "p99": 0.0, "mbs": 0.0, "non2xx": 0, "errors": 0, "requests": 0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        r["rps"] = float(m.group(1))
    if m := re.search(r"Transfer/sec:\s+([\d.]+\w+)", out):
        r["mbs"] = to_mb(m.group(1))
    if m := re.search(r"\s50%\s+([\d.]+\w+)", out):
        r["p50"] = to_ms(m.group(1))
    if m := re.search(r"\s99%\s+([\d.]+\w+)", out):
        r["p99"] = to_ms(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        r["non2xx"] = int(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        r["requests"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        r["errors"] = sum(int(x) for x in m.groups())
    return r


def upstream_conns(origin_port):
    """Established TCP connections to the origin: one per stream a proxy is holding."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == origin_port:
                        count += 1
        except OSError:
            pass
    return count


def raise_fd_limit(held):
    """Each held stream costs a proxy two descriptors (client and origin side): make room."""
    need = 2 * held + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError):
        sys.exit(f"--held {held} needs {need} open files per process; the limit is {soft}/{hard}")


def held_streams(name, pid, port, n, duration, scheme="http"):
    """Hold n slow streams open; measure RSS per stream and /health latency meanwhile.

    The streams count as held once the proxy has n connections open to the origin (each is
    a response in flight); the figure is divided by the number actually held then.
    """
    before = rss_kib(pid)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA_RANDOM_USERS.format(path="/watch/slow", users=1_000_000_000))
        script = f.name
    load = subprocess.Popen(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t", "1", "-c", str(n), "-d", f"{duration + 8}s",
         "--timeout", "60s", "-s", script, f"{scheme}://127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    started.append(load)
    deadline = time.time() + 30 + n / 500
    held = upstream_conns(PORTS["origin"])
    while held < n and time.time() < deadline:
        time.sleep(0.2)
        held = upstream_conns(PORTS["origin"])
    time.sleep(1)  # the last streams' first body bytes
    held = upstream_conns(PORTS["origin"])
    during = rss_kib(pid)
    health = wrk_health(port, duration=3, scheme=scheme)
    load.send_signal(signal.SIGINT)
    load.wait()
    os.unlink(script)
    return {"held": held, "kib_per_stream": max(0, during - before) / max(1, held), "rss_mib": during / 1024,
            "health_p99": health["p99"], "health_p50": health["p50"]}


def wrk_health(port, duration, scheme="http"):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "--latency", "-t", "1", "-c", "1", "-d", f"{duration}s",
         f"{scheme}://127.0.0.1:{port}/health"],
        capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    return parse_wrk(out)


def metrics_text(metrics_port):
    """A proxy's /metrics page ("" when it cannot be read)."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    except Exception:
        return ""


def store_errors(metrics_port):
    """Store calls that failed or timed out so far (each one a 503 under "deny")."""
    text = metrics_text(metrics_port)
    return sum(int(float(n)) for n in re.findall(r'^streamgate_store_errors_total\{[^}]*\} (\S+)', text, re.M))


def expired_leases(metrics_port):
    """Leases the proxy's store has expired so far."""
    m = re.search(r'^streamgate_stream_decisions_total\{outcome="expired"[^}]*\} (\S+)',
                  metrics_text(metrics_port), re.M)
    return int(float(m.group(1))) if m else 0


def store_latency(metrics_port):
    """Mean and p99 (bucket bound) of each store operation, from a proxy's /metrics."""
    text = metrics_text(metrics_port)
    out = {}
    for op in ("open", "renew", "end"):
        total = re.search(rf'streamgate_store_operation_duration_seconds_sum{{op="{op}"}} ([\d.e+-]+)', text)
        count = re.search(rf'streamgate_store_operation_duration_seconds_count{{op="{op}"}} (\d+)', text)
        if not (total and count) or int(count.group(1)) == 0:
            continue
        n = int(count.group(1))
        buckets = re.findall(rf'streamgate_store_operation_duration_seconds_bucket{{op="{op}",le="([^"]+)"}} (\d+)', text)
        p99 = next((float(le) for le, c in buckets if int(c) >= 0.99 * n and le != "+Inf"), float("inf"))
        out[op] = {"count": n, "mean_us": float(total.group(1)) / n * 1e6, "p99_us": p99 * 1e6}
    return out


def streamgate_conf(d, name, port, origin, store, routes, args, access="off", identity_extra="", tls_extra=""):
    """Write the config of one streamgate target; server settings come from the options.
    The access log is off (as the nginx peer's is) except on the `access-log` target."""
    server_extra = "" if args.read_buffer is None else f"read_buffer = {args.read_buffer}"
    path = os.path.join(d, f"{name}.toml")
    with open(path, "w") as f:
        f.write(STREAMGATE_CONF.format(port=port, origin=origin, store=store, routes=routes,
                                       metrics=METRICS[name], threads=args.threads, server_extra=server_extra,
                                       access=access, identity_extra=identity_extra, tls_extra=tls_extra,
                                       stealing=str(not args.no_stealing).lower()))
    return path


JWT_SHAPE = "small, one stream renewed (JWT players)"


def scheme_of(name):
    return "https" if name in HTTPS_TARGETS else "http"


def med(xs):
    return statistics.median(xs) if xs else 0.0


def fmt_spread(xs, digits=0):
    if not xs:
        return "-"
    return f"{med(xs):.{digits}f} ({min(xs):.{digits}f}..{max(xs):.{digits}f})"


def main():
    # Stopped from outside (SIGTERM, SIGINT): still stop everything we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per load run")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--held", type=int, default=2000, help="held slow streams (shape 4; 0: skip them)")
    ap.add_argument("--held-only", action="store_true", help="measure only the held streams (shape 4)")
    ap.add_argument("--threads", type=int, default=1, help="streamgate worker threads")
    ap.add_argument("--no-stealing", action="store_true")
    ap.add_argument("--refusal-cache", default=None, metavar="DURATION",
                    help="store.refusal_cache for the redis-store target (e.g. 1s; default: off)")
    ap.add_argument("--store-timeout", default="500ms", metavar="DURATION",
                    help="redis-store's store.timeout (the product's default is 100ms)")
    ap.add_argument("--read-buffer", type=int, default=None,
                    help="streamgate server.read_buffer in bytes (default: the config default)")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/streamgate"))
    ap.add_argument("--tls-binary", default=os.path.join(ROOT, "target/tls/release/streamgate"),
                    help="a --features tls build, for the HTTPS rows (built into target/tls if missing)")
    ap.add_argument("--ab", action="append", default=[], metavar="LABEL=BINARY",
                    help="a --features tls build to compare in the same run (repeatable): targets "
                         "streamgate-LABEL (plain) and streamgate-https-LABEL")
    ap.add_argument("--ab-plain", action="append", default=[], metavar="LABEL=BINARY",
                    help="a default (plain HTTP only) build to compare in the same run (repeatable): "
                         "target streamgate-LABEL")
    ap.add_argument("--warm", action="store_true",
                    help="keep each target running across all runs (the leases one shape opens then "
                         "expire during a later one); default: a fresh process per run")
    ap.add_argument("--held-rounds", type=int, default=None,
                    help="rounds of the held streams (default: --rounds)")
    ap.add_argument("--bare", default=os.path.join(ROOT, "target/release/examples/bare_pingora"),
                    help="bare Pingora passthrough (examples/bare_pingora.rs), the reference row")
    ap.add_argument("--only", default="", help="comma-separated targets")
    ap.add_argument("--perf", action="store_true",
                    help="after the rounds, profile each target on the segment shapes (perf record; bench/perf-*.txt)")
    ap.add_argument("--strace", action="store_true",
                    help="after the rounds, count each target's syscalls per 1 MiB segment (strace -c)")
    ap.add_argument("--shapes", default="", help="comma-separated shape numbers (1-11) to run")
    args = ap.parse_args()

    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "--bin", "streamgate"], cwd=ROOT, check=True)
    if not os.path.exists(args.tls_binary) and (not args.only or "streamgate-https" in args.only):
        subprocess.run(["cargo", "build", "--release", "--features", "tls", "--target-dir",
                        os.path.join(ROOT, "target/tls"), "--bin", "streamgate"], cwd=ROOT, check=True)
    if not os.path.exists(args.bare):
        subprocess.run(["cargo", "build", "--release", "--example", "bare_pingora"], cwd=ROOT, check=True)
    for tool in ("nginx", "wrk", "taskset", "h2load", "openssl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (apt-get install -y nginx wrk util-linux nghttp2-client openssl)")

    raise_fd_limit(args.held)
    conns = max(20000, 3 * args.held + 100)  # a held stream is two connections on the peer
    nginx_limits = {"conns": conns, "nofile": 2 * conns}

    d = tempfile.mkdtemp(prefix="sgbench-")
    os.chmod(d, 0o755)  # nginx workers run unprivileged and must read www/
    os.makedirs(os.path.join(d, "www"))
    with open(os.path.join(d, "www", "seg.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    # A live playlist of 100 segments, as players reload it (shapes 6 and 7).
    with open(os.path.join(d, "www", "live.m3u8"), "w") as f:
        f.write("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1000\n")
        for n in range(1000, 1100):
            f.write(f"#EXTINF:2.000000,\nlive/seg{n}.ts\n")

    try:
        with open(os.path.join(d, "origin.conf"), "w") as f:
            f.write(ORIGIN_CONF.format(dir=d, port=PORTS["origin"], **nginx_limits))
        start(["nginx", "-p", d, "-c", os.path.join(d, "origin.conf")], LOAD_CORE)
        wait_port(PORTS["origin"], "/watch")

        env = dict(os.environ, RUST_LOG="error")
        mem = 'kind = "memory"'
        commands = {}
        # One certificate for both HTTPS proxies (P-256), TLS 1.3 with AES-256-GCM on both
        # (rustls' first choice, and nginx's by ssl_conf_command).
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
        nginx_tls = (f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.3; "
                     "ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384; ssl_session_cache shared:SSL:10m;")
        peers = {"nginx": ("", "", NGINX_TUNED), "nginx-untuned": ("", "", ""),
                 "nginx-https": ("ssl http2", nginx_tls, NGINX_TUNED)}
        for name, (listen_extra, tls, buffers) in peers.items():
            conf = os.path.join(d, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(NGINX_PEER_CONF.replace("pid {dir}/peer.pid", f"pid {{dir}}/{name}.pid")
                        .replace("error_log {dir}/peer-error.log", f"error_log {{dir}}/{name}-error.log")
                        .format(dir=d, port=PORTS[name], origin=PORTS["origin"], listen_extra=listen_extra,
                                tls=tls, buffers=buffers, **nginx_limits))
            commands[name] = (["nginx", "-p", d, "-c", conf], None)
        https_plain_port = PORTS["streamgate-https"] + 100
        tls_extra = f'[tls]\nlisten = ["127.0.0.1:{PORTS["streamgate-https"]}"]\ncert_file = "{cert}"\nkey_file = "{key}"'
        commands["streamgate-https"] = ([args.tls_binary, "--config",
                                         streamgate_conf(d, "streamgate-https", https_plain_port, PORTS["origin"], mem,
                                                         '"/watch"', args, tls_extra=tls_extra)], env)
        sg = [args.binary, "--config"]
        commands["streamgate"] = (sg + [streamgate_conf(d, "streamgate", PORTS["streamgate"], PORTS["origin"], mem, '"/watch"', args)], env)
        # The same as `streamgate`, writing an access line per request to a file.
        commands["access-log"] = (sg + [streamgate_conf(d, "access-log", PORTS["access-log"], PORTS["origin"], mem, '"/watch"', args,
                                                        access=os.path.join(d, "access.log"))], env)
        # JWT identity (ES256, the token cache on): measured on the JWT players shape only.
        global JWT_KEY
        JWT_KEY = os.path.join(d, "jwt-ec.key")
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-out", JWT_KEY], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", JWT_KEY, "-pubout", "-out", JWT_KEY + ".pub"],
                       check=True, capture_output=True)
        jwt = (f'mode = "jwt"\njwt.keys = [{{ kid = "bench", file = "{JWT_KEY}.pub" }}]\n'
               'jwt.algorithms = ["ES256"]')
        commands["jwt"] = (sg + [streamgate_conf(d, "jwt", PORTS["jwt"], PORTS["origin"], mem, '"/watch"', args,
                                                 identity_extra=jwt)], env)
        commands["passthrough"] = (sg + [streamgate_conf(d, "passthrough", PORTS["passthrough"], PORTS["origin"], mem, '"/limiter-off"', args)], env)
        if shutil.which("redis-server"):
            start(["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"], LOAD_CORE)
            wait_port(PORTS["redis"], None)
            store = f'kind = "redis"\nurl = "redis://127.0.0.1:{PORTS["redis"]}"\ntimeout = "{args.store_timeout}"'
            if args.refusal_cache:
                store += f'\nrefusal_cache = "{args.refusal_cache}"'
            commands["redis-store"] = (sg + [streamgate_conf(d, "redis-store", PORTS["redis-store"], PORTS["origin"], store, '"/watch"', args)], env)
        # Pingora with nothing of ours on the request path (no timeouts, no filters): what
        # the proxy framework alone does on this machine.
        commands["bare-pingora"] = ([args.bare, f"127.0.0.1:{PORTS['bare-pingora']}",
                                     f"127.0.0.1:{PORTS['origin']}"], None)
        ab_targets = set()
        builds = [(spec, True) for spec in args.ab] + [(spec, False) for spec in args.ab_plain]
        for i, (spec, has_tls) in enumerate(builds):
            label, sep, binary = spec.partition("=")
            flag = "--ab" if has_tls else "--ab-plain"
            if not sep or not label:
                sys.exit(f"{flag} {spec}: expected LABEL=BINARY")
            if not os.access(binary, os.X_OK):
                sys.exit(f"{flag} {spec}: {binary} is not an executable file")
            plain, https = f"streamgate-{label}", f"streamgate-https-{label}"
            PORTS[plain], METRICS[plain] = AB_PORTS + 2 * i, AB_METRICS + 2 * i
            ab_targets.add(plain)
            commands[plain] = ([binary, "--config", streamgate_conf(
                d, plain, PORTS[plain], PORTS["origin"], mem, '"/watch"', args)], env)
            if not has_tls:
                continue
            PORTS[https], METRICS[https] = AB_PORTS + 2 * i + 1, AB_METRICS + 2 * i + 1
            HTTPS_TARGETS.add(https)
            ab_targets.add(https)
            ab_tls = tls_extra.replace(str(PORTS["streamgate-https"]), str(PORTS[https]))
            commands[https] = ([binary, "--config", streamgate_conf(
                d, https, PORTS[https] + 100, PORTS["origin"], mem, '"/watch"', args, tls_extra=ab_tls)], env)
        if args.only:
            keep = set(args.only.split(","))
            keep |= ab_targets
            commands = {k: v for k, v in commands.items() if k in keep}

        def launch(name):
            cmd, e = commands[name]
            proc = start(cmd, PROXY_CORE, env=e) if e else start(cmd, PROXY_CORE)
            wait_port(PORTS[name], scheme=scheme_of(name))
            return proc

        def halt(proc):
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        # Each run gets a fresh process unless --warm: a shape's leases (random users open
        # one per request) expire a lease TTL later, into whichever run a long-lived target
        # serves then, which would pay for their expiry (issue #17).
        warm = {name: launch(name) for name in commands} if args.warm else {}

        class Fresh:
            """A target's process for one measurement: the warm one, or a new one halted after."""

            def __init__(self, name):
                self.name = name

            def __enter__(self):
                self.proc = warm.get(self.name) or launch(self.name)
                return self.proc

            def __exit__(self, *exc):
                if self.name in METRICS:
                    latency[self.name] = store_latency(METRICS[self.name])
                if self.name not in warm:
                    halt(self.proc)

        targets = list(commands)
        latency = {}

        shapes = [
            ("small, random users", "/watch", 10_000_000, "http"),
            ("small, one stream renewed (players)", "/watch", 0, "http"),
            ("small, 20 users (limit bites)", "/watch", 20, "http"),
            ("1 MiB segments, random users", "/watch/seg", 10_000_000, "http"),
            ("small, one stream renewed by URL", "/watch", -1, "http"),
            ("manifest, 100 segments, rewritten", "/watch/live.m3u8", -1, "http"),
            ("same bytes, not a manifest", "/watch/live.bin", -1, "http"),
            (JWT_SHAPE, "/watch", -2, "http"),
            ("HTTPS small, random users", "/watch", 10_000_000, "https"),
            ("HTTPS 1 MiB segments, random users", "/watch/seg", 10_000_000, "https"),
            ("HTTP/2 1 MiB segments, no limiter (h2load)", "/h2/seg", None, "h2"),
        ]
        if args.held_only:
            shapes = []
        elif args.shapes:
            picked = {int(x) for x in args.shapes.split(",")}
            shapes = [s for i, s in enumerate(shapes, 1) if i in picked]
        results = {name: {s[0]: [] for s in shapes} for name in targets}
        for rnd in range(args.rounds):
            for shape, path, users, scheme in shapes:
                conns = args.conns if "MiB" not in shape else 16
                for name in targets:
                    # The jwt target answers header-only requests 401 token_required.
                    if name == "jwt" and shape != JWT_SHAPE:
                        continue
                    if (scheme_of(name) == "https") != (scheme != "http"):
                        continue
                    with Fresh(name) as proc:
                        errs = store_errors(METRICS[name]) if name in METRICS else 0
                        expired = expired_leases(METRICS[name]) if name in METRICS else 0
                        cpu = cpu_seconds(proc.pid)
                        if scheme == "h2":
                            r = h2load(PORTS[name], path, conns, args.duration)
                        else:
                            r = wrk(PORTS[name], path, users, conns, args.duration, scheme=scheme)
                        # CPU per request: less swayed than req/s by a noisy neighbour's steal.
                        r["cpu_us"] = (cpu_seconds(proc.pid) - cpu) / max(r["requests"], 1) * 1e6
                        r["store_errors"] = (store_errors(METRICS[name]) if name in METRICS else 0) - errs
                        r["expired"] = (expired_leases(METRICS[name]) if name in METRICS else 0) - expired
                    results[name][shape].append(r)
                    p99 = "-" if r["p99"] is None else f"{r['p99']:.2f}"
                    print(f"round {rnd + 1} {name:12} {shape:32} {r['rps']:9.0f} req/s "
                          f"{r['mbs']:8.1f} MB/s p50 {r['p50']:.2f} ms p99 {p99} ms "
                          f"non-2xx {r['non2xx']} errors {r['errors']} store errors {r['store_errors']} "
                          f"cpu {r['cpu_us']:.1f} us/req leases expired {r['expired']}", flush=True)

        def segment_runs():
            """(shape, path, users, scheme, target) of every wrk segment run: what --strace
            and --perf look at."""
            for shape, path, users, scheme in shapes:
                if "MiB" not in shape or scheme == "h2":
                    continue
                for name in targets:
                    if name != "jwt" and (scheme_of(name) == "https") == (scheme == "https"):
                        yield shape, path, users, scheme, name

        traced = {}
        for shape, path, users, scheme, name in (segment_runs() if args.strace else []):
            with Fresh(name) as proc:
                t = strace_per_request(proc.pid, lambda: wrk(PORTS[name], path, users, 16,
                                                              args.duration, scheme=scheme))
            traced[(shape, name)] = t
            print(f"strace {name:16} {shape:36} per request: {t['total']:.0f} syscalls, "
                  f"{t['reads']:.1f} reads ({t['kib_per_read']:.1f} KiB each), {t['writes']:.1f} writes "
                  f"({t['kib_per_write']:.1f} KiB each), {t['epoll']:.1f} epoll, {t['futex']:.1f} futex; "
                  f"top {t['top']}", flush=True)
        for shape, path, users, scheme, name in (segment_runs() if args.perf else []):
            out = os.path.join(ROOT, "bench", f"perf-{name}-{scheme}.txt")
            with Fresh(name) as proc:
                share = perf_top(proc.pid, lambda: wrk(PORTS[name], path, users, 16, args.duration,
                                                        scheme=scheme), out)
            print(f"perf {name:16} {shape}: {out} (userspace {share['user']:.1f} %, memmove/memcpy "
                  f"{share['memmove']:.1f} %, streamgate's own functions {share['ours']:.2f} %, "
                  f"moka {share['moka']:.2f} %)", flush=True)
        for proc in warm.values():
            halt(proc)
        # Held streams: each target starts fresh, so the figure is the streams' own memory,
        # not what the load shapes left behind.
        held = {name: [] for name in targets}
        held_rounds = args.rounds if args.held_rounds is None else args.held_rounds
        for rnd in range(held_rounds if args.held else 0):
            for name in commands:
                if name == "jwt":  # held streams name their user by header
                    continue
                proc = launch(name)
                time.sleep(1)
                h = held_streams(name, proc.pid, PORTS[name], args.held, args.duration, scheme=scheme_of(name))
                halt(proc)
                held[name].append(h)
                print(f"round {rnd + 1} {name:12} held {h['held']} of {args.held} streams: "
                      f"{h['kib_per_stream']:.1f} KiB/stream, RSS {h['rss_mib']:.1f} MiB, "
                      f"/health p99 {h['health_p99']:.2f} ms", flush=True)
        report(args, shapes, results, held, latency, traced)
    finally:
        stop_all()
        shutil.rmtree(d, ignore_errors=True)


def report(args, shapes, results, held, latency, traced):
    lines = []
    lines.append(f"rounds: {args.rounds} x {args.duration} s, {args.conns} connections "
                 f"(16 for segments), streamgate threads {args.threads}"
                 + (f", redis-store refusal_cache {args.refusal_cache}" if args.refusal_cache else "")
                 + f", redis-store timeout {args.store_timeout}"
                 + "; medians (min..max)\n")
    lines.append("| shape | target | req/s | MB/s | p50 ms | p99 ms | CPU us/req | non-2xx | errors | store errors "
                 "| req/s vs nginx | p99 vs nginx | CPU/req vs nginx |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape, _, _, scheme in shapes:
        base = results.get(BASE[scheme], {}).get(shape, [])
        base_rps = med([r["rps"] for r in base])
        base_p99 = med([r["p99"] for r in base if r["p99"] is not None])
        base_cpu = med([r["cpu_us"] for r in base])
        for name in results:
            rs = results[name][shape]
            if not rs:
                continue
            rps = [r["rps"] for r in rs]
            p99 = [r["p99"] for r in rs if r["p99"] is not None]
            ratio = f"{med(rps) / base_rps:.2f}x" if base_rps else "-"
            pratio = f"{med(p99) / base_p99:.2f}x" if base_p99 and p99 else "-"
            cpu = [r["cpu_us"] for r in rs]
            cratio = f"{med(cpu) / base_cpu:.2f}x" if base_cpu else "-"
            lines.append(f"| {shape} | {name} | {fmt_spread(rps)} | {fmt_spread([r['mbs'] for r in rs], 1)} | "
                         f"{fmt_spread([r['p50'] for r in rs], 2)} | {fmt_spread(p99, 2) if p99 else '-'} | "
                         f"{fmt_spread(cpu, 0)} | "
                         f"{int(med([r['non2xx'] for r in rs]))} | {int(med([r['errors'] for r in rs]))} | "
                         f"{int(med([r['store_errors'] for r in rs]))} | {ratio} | {pratio} | {cratio} |")
    jwt = med([r["rps"] for r in results.get("jwt", {}).get(JWT_SHAPE, [])])
    header = med([r["rps"] for r in results.get("streamgate", {}).get(JWT_SHAPE, [])])
    if jwt and header:
        lines.append(f"\nJWT players (ES256, cached) vs header players on one streamgate build: "
                     f"{jwt:.0f} vs {header:.0f} req/s = **{jwt / header:.3f}x** (aim: within 5 %)")
    lines.append("")
    held = {name: hs for name, hs in held.items() if hs}
    if held:
        lines.append(f"Held streams ({args.held} concurrent slow streams, distinct users):\n")
        lines.append("| target | held (min) | KiB per held stream | RSS MiB | /health p50 ms | /health p99 ms | memory vs nginx |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, hs in held.items():
            base_kib = med([h["kib_per_stream"] for h in held.get(BASE[scheme_of(name)], [])])
            kib = [h["kib_per_stream"] for h in hs]
            ratio = f"{med(kib) / base_kib:.2f}x" if base_kib else "-"
            lines.append(f"| {name} | {min(h['held'] for h in hs)} | {fmt_spread(kib, 1)} | {fmt_spread([h['rss_mib'] for h in hs], 1)} | "
                         f"{fmt_spread([h['health_p50'] for h in hs], 2)} | {fmt_spread([h['health_p99'] for h in hs], 2)} | {ratio} |")
        lines.append("")
    if traced:
        lines.append("Syscalls per 1 MiB segment (strace -c -f on the proxy, wrk -c 16; the rate under strace is not a figure):\n")
        lines.append("| shape | target | syscalls | reads | KiB per read | writes | KiB per write | epoll | futex | most called |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for (shape, name), t in traced.items():
            top = ", ".join(f"{c} {v / max(t['requests'], 1):.1f}" for c, v in t["top"][:4])
            lines.append(f"| {shape} | {name} | {t['total']:.1f} | {t['reads']:.1f} | {t['kib_per_read']:.1f} | "
                         f"{t['writes']:.1f} | {t['kib_per_write']:.1f} | {t['epoll']:.1f} | {t['futex']:.1f} | {top} |")
        lines.append("")
    lines.append("Store operation latency, from each proxy's own histogram (its last process):\n")
    lines.append("| target | op | count | mean us | p99 us (bucket bound) |")
    lines.append("|---|---|---|---|---|")
    for name, ops in latency.items():
        for op, v in ops.items():
            lines.append(f"| {name} | {op} | {v['count']} | {v['mean_us']:.1f} | <= {v['p99_us']:.0f} |")
    text = "\n".join(lines)
    print("\n" + text)
    with open(os.path.join(ROOT, "bench", "results.md"), "w") as f:
        f.write(f"<!-- written by bench/run.py on {time.strftime('%Y-%m-%d %H:%M:%S')} -->\n{text}\n")


if __name__ == "__main__":
    main()
