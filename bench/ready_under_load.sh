#!/usr/bin/env bash
# /ready and /health while far more clients than one core can serve hammer a proxy on the
# Redis store (docs/tuning.md#store-timeout). Loopback only; stops what it started, by PID.
#   bench/ready_under_load.sh [store timeout, default 100ms] [connections, default 3000]
# Needs: nginx, wrk, redis-server, curl, taskset; a release build (cargo build --release).
set -euo pipefail
timeout="${1:-100ms}"
conns="${2:-3000}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release/streamgate"
d="$(mktemp -d /tmp/sgready-XXXXXX)"
chmod 755 "$d"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"; }
trap cleanup EXIT

cat > "$d/origin.conf" <<CONF
worker_processes 1;
daemon off;
pid $d/origin.pid;
error_log $d/origin-error.log warn;
events { worker_connections 20000; }
http {
  access_log off;
  server { listen 127.0.0.1:18281; location = /watch { return 200 "ok\n"; } }
}
CONF
cat > "$d/sg.toml" <<CONF
[server]
listen = ["127.0.0.1:18282"]
threads = 1
[upstream]
addrs = ["127.0.0.1:18281"]
[store]
kind = "redis"
url = "redis://127.0.0.1:18283"
timeout = "$timeout"
[metrics]
listen = "127.0.0.1:18284"
CONF

taskset -c 1 nginx -p "$d" -c "$d/origin.conf" & pids+=($!)
taskset -c 1 redis-server --port 18283 --bind 127.0.0.1 --save "" --appendonly no > /dev/null & pids+=($!)
sleep 0.5
RUST_LOG=error taskset -c 0 "$bin" --config "$d/sg.toml" > "$d/sg.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:18282/health && break; sleep 0.1; done

taskset -c 1 wrk -t2 -c"$conns" -d10s -H "Session-Id: hot" http://127.0.0.1:18282/watch > "$d/wrk.txt" &
wrk_pid=$!
sleep 2
for _ in $(seq 12); do
  curl -s -o /dev/null --max-time 5 -w "/ready  %{http_code} in %{time_total} s\n" http://127.0.0.1:18282/ready || true
  curl -s -o /dev/null --max-time 5 -w "/health %{http_code} in %{time_total} s\n" http://127.0.0.1:18282/health || true
  sleep 0.5
done
wait "$wrk_pid"
grep -E "Requests/sec|Non-2xx" "$d/wrk.txt"
curl -s http://127.0.0.1:18284/metrics | grep -E "^streamgate_store_errors_total" || echo "no store errors"
