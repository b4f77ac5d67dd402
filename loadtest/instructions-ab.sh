#!/usr/bin/env bash
# Instructions per request of two builds of the API, side by side: a count
# that, unlike req/s, does not move with the other work of a shared machine.
#
#   loadtest/instructions-ab.sh BIN_A BIN_B [N]
#
# Each binary (two release builds, e.g. of a base commit and of a change)
# serves a real redis-server under `valgrind --tool=callgrind`, one worker,
# twice: with the value cache on (every read a cache hit) and off (every
# read through Redis). After 500 requests of warm-up the counters are
# zeroed, then N (default 20000) keep-alive GET /v1/keys/k on one connection
# are sent and the counters dumped: user-space instructions of the whole
# process (all threads, the INFO poll's included: its period is set to the
# longest) divided by N. Needs valgrind, redis-server, python3.
# Output: one table on stdout; the callgrind files stay in $WORK (printed).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 BIN_A BIN_B [N]" >&2
  exit 2
fi
A=$1
B=$2
N=${3:-20000}
for tool in valgrind callgrind_control redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || {
    echo "$0: $tool not found (valgrind: scripts/install-deps.sh valgrind)" >&2
    exit 1
  }
done
for bin in "$A" "$B"; do
  [[ -x $bin ]] || {
    echo "$0: $bin is not an executable" >&2
    exit 1
  }
done

WORK=$(mktemp -d /tmp/instructions-ab.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --daemonize no >"$WORK/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" set k '{"a value":"of some fifty bytes, like a small record"}' >/dev/null
# A heartbeat, so that Data-Age is sent (what it says does not matter here).
redis-cli -p "$REDIS_PORT" set read-api:heartbeat "$(date +%s%3N)" >/dev/null

# Sends $2 GET /v1/keys/k on one keep-alive connection to port $1; fails on
# anything but a 200.
client() {
  python3 - "$1" "$2" <<'EOF'
import http.client
import sys

port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for _ in range(n):
    conn.request("GET", "/v1/keys/k")
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"status {response.status}")
EOF
}

# Prints the instructions per request of binary $1 with CACHE_MAX_BYTES=$2.
measure() {
  local bin=$1 cache=$2 tag=$3 port admin pid out
  port=$(free_port)
  admin=$(free_port)
  out="$WORK/callgrind.$tag"
  REDIS_URL="redis://127.0.0.1:$REDIS_PORT" LISTEN_ADDR="127.0.0.1:$port" \
    ADMIN_ADDR="127.0.0.1:$admin" WORKERS=1 CACHE_MAX_BYTES=$cache \
    REPLICA_POLL_MS=60000 SHUTDOWN_DELAY_SECONDS=0 SHUTDOWN_GRACE_SECONDS=0 \
    RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
    "$bin" >"$WORK/$tag.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 600); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$admin/readyz', timeout=5)" \
      2>/dev/null && break
    sleep 0.2
  done
  client "$port" 500
  callgrind_control --zero "$pid" >/dev/null 2>&1
  client "$port" "$N"
  callgrind_control --dump="$tag" "$pid" >/dev/null 2>&1
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  # The zeroed-then-dumped part: the file whose trigger names the tag.
  local file
  file=$(grep -l "^desc: Trigger: .*$tag" "$out.$pid".* | head -1)
  awk -v n="$N" '/^(summary|totals):/ { printf "%.0f\n", $2 / n; exit }' "$file"
}

printf '| path | A instructions/request | B instructions/request | B / A |\n'
printf '| --- | ---: | ---: | ---: |\n'
for path in cache redis; do
  cache=16777216
  [[ $path == redis ]] && cache=0
  a=$(measure "$A" "$cache" "a-$path")
  b=$(measure "$B" "$cache" "b-$path")
  label="value-cache hit"
  [[ $path == redis ]] && label="read through Redis"
  printf '| %s | %d | %d | %s |\n' "$label" "$a" "$b" \
    "$(python3 -c "print(f'{$b / $a:.4f}')")"
done
echo "callgrind files: $WORK" >&2
