#!/usr/bin/env bash
# make bench: the read path on this machine, side by side in one run. The
# system under test (API, Redis, stunnel, webdis, nginx) is pinned to SUT_CPUS
# and the load generators (wrk, oha, redis-benchmark) to LOAD_CPUS.
#
#   1. the API in sidecar mode: local replica following a TLS master through
#      stunnel, read over loopback TCP and over a unix socket
#   2. the API in central mode: reading the master directly over TLS
#   3. webdis on the same replica, GET /GET/known-key
#   4. an HTTP ceiling: nginx `return 200` with the same body
#   5. redis-benchmark GET on the same replica
# plus a rate ladder (success and p99 against offered rate) for central and
# sidecar, and what a request costs in CPU (for loadtest/model).
#
#   BENCH_QUICK=1   a few seconds per point (make test uses it; numbers are rough)
#   BENCH_SECONDS   seconds per point (default 10, or 2 when quick)
#   CONNECTIONS     load generator connections (default 32)
#   ROUNDS          turns taken by the API, webdis and nginx (default 3, 1 when quick)
#   SUT_CPUS, LOAD_CPUS   default 0 and 1
# Output: target/bench/report.md (also on stdout), results.csv, ladder.svg, costs.json.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$repo/target/bench"
BENCH_SECONDS=${BENCH_SECONDS:-$([[ -n ${BENCH_QUICK:-} ]] && echo 2 || echo 10)}
CONNECTIONS=${CONNECTIONS:-32}
SUT_CPUS=${SUT_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
VALUE_BYTES=${VALUE_BYTES:-100}
LADDER=${LADDER:-0.25,0.5,0.75,1.0,1.25}
ROUNDS=${ROUNDS:-$([[ -n ${BENCH_QUICK:-} ]] && echo 1 || echo 3)}

# Ports of their own, so a running demo is left alone.
export STATE_DIR="$out/topology" MASTER_PORT=26380 STUNNEL_PORT=26390 REPLICA_PORT=26379
export API_ADDR=127.0.0.1:28080 API_ADMIN_ADDR=127.0.0.1:29090 SUT_CPUS
export WORKERS=${WORKERS:-1} LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}
webdis_port=27379 nginx_port=28081
topology="$repo/scripts/local-topology.sh"
load=(taskset -c "$LOAD_CPUS")
sut=(taskset -c "$SUT_CPUS")

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

say "prerequisites"
"$repo/scripts/install-deps.sh" redis-server redis-cli stunnel4 webdis nginx gnuplot openssl curl taskset wrk
"$here/install-oha.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p read-api 2>&1 | tail -n 1 >&2

rm -rf "$out"
mkdir -p "$out/runs" "$out/services"
points="$out/points.jsonl"
: >"$points"

stop_services() {
    local pidfile
    for pidfile in "$out"/services/*.pid; do
        [[ -e $pidfile ]] && kill "$(<"$pidfile")" 2>/dev/null || true
    done
    "$topology" down >/dev/null 2>&1 || true
}
trap stop_services EXIT

pid_of() { cat "$STATE_DIR/run/$1.pid"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Runs wrk as fast as it goes against URL; records the result as NAME, with the
# peak resident memory of RSS_PID when given. (wrk for the maximum: it spends
# the least CPU per request of the generators here, so it caps the others last.)
measure() {
    local name=$1 url=$2 rss_pid=${3:-} peak=0 rss sampler
    if [[ -n $rss_pid ]]; then
        (
            while kill -0 "$rss_pid" 2>/dev/null; do
                awk '/^VmRSS/ { print $2 }' "/proc/$rss_pid/status"
                sleep 0.2
            done
        ) >"$out/runs/$name.rss" &
        sampler=$!
    fi
    "${load[@]}" wrk -t 1 -c "$CONNECTIONS" -d "${BENCH_SECONDS}s" -s "$here/lib/wrk-json.lua" \
        "$url" >"$out/runs/$name.json"
    if [[ -n $rss_pid ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        peak=$(sort -n "$out/runs/$name.rss" | tail -n 1)
    fi
    python3 "$here/lib/results.py" wrk "$out/runs/$name.json" --label "$name" --extra "rss_kb=${peak:-0}" | tee -a "$points" >&2
}

# A rate ladder of LABEL against URL at the given absolute rates, with oha, the
# stand-in for vegeta (wrk has no fixed rate), and the API's own p99 per step.
ladder() {
    local label=$1 url=$2 rates=$3 rate
    : >"$out/ladder-$label.jsonl"
    for rate in ${rates//,/ }; do
        curl -fs "http://$API_ADMIN_ADDR/metrics" >"$out/runs/ladder-$label-$rate.before"
        "${load[@]}" oha --no-tui --output-format json --worker-threads 1 -z "${BENCH_SECONDS}s" -q "$rate" \
            -c "$CONNECTIONS" "$url" >"$out/runs/ladder-$label-$rate.json"
        curl -fs "http://$API_ADMIN_ADDR/metrics" >"$out/runs/ladder-$label-$rate.after"
        server_p99=$(python3 "$here/lib/server_quantile.py" "$out/runs/ladder-$label-$rate".{before,after})
        python3 "$here/lib/results.py" oha "$out/runs/ladder-$label-$rate.json" --label "$label" --rate "$rate" \
            --extra "server_p99_ms=$server_p99" | tee -a "$out/ladder-$label.jsonl" >&2
    done
}

# CPU microseconds per unit of work, from clock ticks.
ticks_to_us() {
    python3 -c "import os; print(round($1 * 1e6 / os.sysconf('SC_CLK_TCK') / $2, 2))"
}

# CPU microseconds per unit of work that PID spent since it had BEFORE ticks.
cpu_us_since() {
    ticks_to_us "$(($(cpu_ticks "$1") - $2))" "$3"
}
last_requests() { tail -n 1 "$points" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])'; }

value=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' v)
api_url="http://$API_ADDR/v1/keys/known-key"

say "sidecar topology, API over loopback TCP; webdis on the same replica; nginx"
TOPOLOGY=sidecar API_REDIS=tcp "$topology" up
"$topology" seed known-key "$value"
until curl -fs "$api_url" >/dev/null; do sleep 0.1; done
api=$(pid_of api) replica=$(pid_of replica)

source "$STATE_DIR/passwords.env"
cat >"$out/services/webdis.json" <<EOF
{"redis_host": "127.0.0.1", "redis_port": $REPLICA_PORT, "redis_auth": "$REPLICA_PASSWORD",
 "http_host": "127.0.0.1", "http_port": $webdis_port, "threads": 1, "pool_size": 4,
 "daemonize": false, "verbosity": 1, "logfile": "$out/services/webdis.log"}
EOF
"${sut[@]}" webdis "$out/services/webdis.json" &
echo $! >"$out/services/webdis.pid"
until curl -fs "http://127.0.0.1:$webdis_port/GET/known-key" >/dev/null; do sleep 0.1; done

mkdir -p "$out/services/nginx"
cat >"$out/services/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $out/services/nginx/nginx.pid;
error_log $out/services/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $out/services/nginx;
    proxy_temp_path $out/services/nginx;
    fastcgi_temp_path $out/services/nginx;
    uwsgi_temp_path $out/services/nginx;
    scgi_temp_path $out/services/nginx;
    server {
        listen 127.0.0.1:$nginx_port;
        default_type application/json;
        location / { return 200 '{"key":"known-key","value":"$value"}'; }
    }
}
EOF
"${sut[@]}" nginx -c "$out/services/nginx/nginx.conf" -e "$out/services/nginx/error.log" &
echo $! >"$out/services/nginx-master.pid"
until curl -fs "http://127.0.0.1:$nginx_port/" >/dev/null; do sleep 0.1; done

# The three take turns, ROUNDS times, so that a noisy neighbour on this shared
# machine hits them alike; the report takes each one's median.
api_ticks=0 replica_ticks=0 api_requests=0
for round in $(seq "$ROUNDS"); do
    say "round $round of $ROUNDS: api, webdis, nginx"
    api_before=$(cpu_ticks "$api") replica_before=$(cpu_ticks "$replica")
    measure api-sidecar-tcp "$api_url" "$api"
    api_ticks=$((api_ticks + $(cpu_ticks "$api") - api_before))
    replica_ticks=$((replica_ticks + $(cpu_ticks "$replica") - replica_before))
    api_requests=$((api_requests + $(last_requests)))
    measure webdis "http://127.0.0.1:$webdis_port/GET/known-key" "$(<"$out/services/webdis.pid")"
    measure nginx-ceiling "http://127.0.0.1:$nginx_port/"
done
api_us=$(ticks_to_us "$api_ticks" "$api_requests")
replica_us=$(ticks_to_us "$replica_ticks" "$api_requests")

say "redis-benchmark GET on the same replica"
bench_requests=$((BENCH_SECONDS * 60000))
REDISCLI_AUTH=$REPLICA_PASSWORD "${load[@]}" redis-benchmark -h 127.0.0.1 -p "$REPLICA_PORT" -a "$REPLICA_PASSWORD" \
    -c "$CONNECTIONS" -n "$bench_requests" --csv GET known-key 2>/dev/null >"$out/runs/redis-benchmark.csv"
python3 - "$out/runs/redis-benchmark.csv" >>"$points" <<'PY'
import csv, json, sys
row = next(csv.DictReader(open(sys.argv[1])))
print(json.dumps({"label": "redis-benchmark", "engine": "redis-benchmark", "offered_rate": 0,
                  "requests": 0, "ok": 0, "success_ratio": 1.0, "throughput": float(row["rps"]),
                  "p50_ms": float(row["p50_latency_ms"]), "p95_ms": float(row["p95_latency_ms"]),
                  "p99_ms": float(row["p99_latency_ms"]), "max_ms": float(row["max_latency_ms"]), "rss_kb": 0}))
PY
tail -n 1 "$points" >&2

say "replication cost: writes through the master, CPU in stunnel"
writes=$((BENCH_SECONDS * 5000))
stunnel_before=$(cpu_ticks "$(pid_of stunnel)")
KEYSPACE=$writes VALUE_BYTES=$VALUE_BYTES "$here/seed-keys.sh"
# Let the replica drain what the master sent before reading the clock.
sleep 1
stunnel_us=$(cpu_us_since "$(pid_of stunnel)" "$stunnel_before" "$writes")

max_sidecar=$(python3 -c "
import json, statistics
rows = [json.loads(line) for line in open('$points')]
print(statistics.median(r['throughput'] for r in rows if r['label'] == 'api-sidecar-tcp'))")
rates=$(python3 -c "print(','.join(str(int(float(f) * $max_sidecar)) for f in '$LADDER'.split(',')))")
say "rate ladder, sidecar: $rates"
ladder sidecar "$api_url" "$rates"

say "sidecar topology, API over a unix socket"
TOPOLOGY=sidecar API_REDIS=unix "$topology" up
"$topology" seed known-key "$value"
until curl -fs "$api_url" >/dev/null; do sleep 0.1; done
measure api-sidecar-unix "$api_url" "$(pid_of api)"

say "central topology, API reading the master over TLS"
TOPOLOGY=central "$topology" up
"$topology" seed known-key "$value"
master=$(pid_of master) api=$(pid_of api)
master_before=$(cpu_ticks "$master") api_before=$(cpu_ticks "$api")
measure api-central-tls "$api_url" "$api"
master_us=$(cpu_us_since "$master" "$master_before" "$(last_requests)")
central_api_us=$(cpu_us_since "$api" "$api_before" "$(last_requests)")
say "rate ladder, central: $rates"
ladder central "$api_url" "$rates"
"$topology" down >/dev/null

cat >"$out/costs.json" <<EOF
{"api_cpu_us_per_read": $api_us, "replica_cpu_us_per_read": $replica_us,
 "central_api_cpu_us_per_read": $central_api_us, "master_tls_cpu_us_per_read": $master_us,
 "stunnel_cpu_us_per_write": $stunnel_us,
 "sut_cpus": "$SUT_CPUS", "seconds_per_point": $BENCH_SECONDS, "connections": $CONNECTIONS}
EOF
"$here/plot.sh" "$out/ladder.svg" "$out/ladder-central.jsonl" "$out/ladder-sidecar.jsonl"
python3 "$here/lib/bench_report.py" "$out" | tee "$out/report.md"
