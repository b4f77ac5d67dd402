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
#   6. the peers a user would try instead (issue 29), on the same replica:
#      OpenResty with lua-resty-redis per request, OpenResty with a per-worker
#      cache kept by CLIENT TRACKING BCAST (loadtest/openresty), and a minimal
#      hyper + fred server (loadtest/hyper-fred, a baseline)
#   7. the API with its value cache on (the rows above run with it off, so
#      that they and the costs measure the read path through Redis): the same
#      hot key, and a Zipf keyspace larger than the cache, with its hit ratio
# plus a rate ladder (success and p99 against offered rate) for central and
# sidecar, what a request costs in CPU (for loadtest/model), and overload: the
# API and webdis each in a cgroup of OVERLOAD_CPU of one core, their closed-loop
# capacity (wrk) and then the open-loop generator (lib/openloop.py) at
# OVERLOAD_FACTORS times it (the API) and at 2 × (webdis), side by side.
#
#   BENCH_QUICK=1   a few seconds per point (make test uses it; numbers are rough)
#   BENCH_SECONDS   seconds per point (default 10, or 2 when quick)
#   CONNECTIONS     load generator connections (default 32)
#   ROUNDS          turns taken by the API, webdis and nginx (default 3, 1 when quick)
#   SUT_CPUS, LOAD_CPUS   default 0 and 1
#   OVERLOAD_CPU    cores of the overload rows' cgroup (default 0.1, as issue 24 measured)
#   OVERLOAD_PERIOD_US    its CFS period (default 10000: the shortest that takes a 10 % quota,
#                   which is at least 1 ms; a throttled server waits up to period - quota)
#   OVERLOAD_FACTORS      the API's offered rates in multiples of its capacity (default 0.5,2,5)
# plus the API's instructions per request under callgrind (loadtest/lib/instructions.py).
# Output: target/bench/report.md (also on stdout), results.csv, ladder.svg, costs.json, instructions.json.
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
OVERLOAD_CPU=${OVERLOAD_CPU:-0.1}
OVERLOAD_PERIOD_US=${OVERLOAD_PERIOD_US:-10000}
OVERLOAD_FACTORS=${OVERLOAD_FACTORS:-0.5,2,5}

# Ports of their own, so a running demo is left alone.
export STATE_DIR="$out/topology" MASTER_PORT=26380 STUNNEL_PORT=26390 REPLICA_PORT=26379
export API_ADDR=127.0.0.1:28080 API_ADMIN_ADDR=127.0.0.1:29090 SUT_CPUS
export WORKERS=${WORKERS:-1} LOG_FORMAT=json RUST_LOG=${RUST_LOG:-warn}
# The topology's API reads through to Redis (its rows and costs measure that
# path, and feed loadtest/model); the cache gets API processes of its own.
export CACHE_MAX_BYTES=0
webdis_port=27379 nginx_port=28081 cached_port=28082 cached_admin_port=29091
zipf_port=28083 zipf_admin_port=29092
openresty_port=28084 openresty_tracking_port=28085 hyper_fred_port=28086
topology="$repo/scripts/local-topology.sh"
api_url="http://$API_ADDR/v1/keys/known-key"
points="$out/points.jsonl"
cpu="$out/cpu.jsonl"
load=(taskset -c "$LOAD_CPUS")
sut=(taskset -c "$SUT_CPUS")

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
pid_of() { cat "$STATE_DIR/run/$1.pid"; }
bench_py() { python3 "$here/lib/bench.py" "$@"; }
results() { python3 "$here/lib/results.py" "$@"; }
wait_http() { until curl -fs "$1" >/dev/null; do sleep 0.1; done; }

prerequisites() {
    say "prerequisites"
    "$repo/scripts/install-deps.sh" redis-server redis-cli stunnel4 webdis nginx gnuplot openssl curl taskset wrk valgrind \
        pkg:libnginx-mod-http-lua pkg:lua-nginx-redis pkg:lua-cjson
    "$here/install-oha.sh"
    export PATH="$HOME/.cargo/bin:$PATH"
    cargo build --release --locked -p read-api 2>&1 | tail -n 1 >&2
    # A workspace of its own (make test never builds it), sharing target/.
    cargo build --release --locked --manifest-path "$here/hyper-fred/Cargo.toml" \
        --target-dir "$repo/target" 2>&1 | tail -n 1 >&2
}

stop_services() {
    local pidfile group
    for group in "$out"/services/*.cgroup; do
        [[ -e $group ]] && bench_py unlimit "$(basename "$group" .cgroup)" "$(<"$group")" 2>/dev/null || true
    done
    for pidfile in "$out"/services/*.pid; do
        [[ -e $pidfile ]] && kill "$(<"$pidfile")" 2>/dev/null || true
    done
    "$topology" down >/dev/null 2>&1 || true
}

# Starts the topology (TOPOLOGY and API_REDIS from the caller) with known-key in it.
topology_up() {
    "$topology" up
    "$topology" seed known-key "$value"
    wait_http "$api_url"
}

# Runs wrk as fast as it goes against URL; records the result as NAME, with the
# peak resident memory of RSS_PID when given; further arguments go to results.py
# (--extra KEY=NUMBER). WRK_SCRIPT replaces the JSON reporting script. (wrk for the maximum: it spends
# the least CPU per request of the generators here, so it caps the others last.)
measure() {
    local name=$1 url=$2 rss_pid=${3:-} sampler rss=()
    shift 3 || shift $#
    if [[ -n $rss_pid ]]; then
        rss=(--rss-samples "$out/runs/$name.rss")
        (
            while kill -0 "$rss_pid" 2>/dev/null; do
                awk '/^VmRSS/ { print $2 }' "/proc/$rss_pid/status"
                sleep 0.2
            done
        ) >"$out/runs/$name.rss" &
        sampler=$!
    fi
    "${load[@]}" wrk -t 1 -c "$CONNECTIONS" -d "${BENCH_SECONDS}s" -s "${WRK_SCRIPT:-$here/lib/wrk-json.lua}" \
        "$url" >"$out/runs/$name.json"
    if [[ -n $rss_pid ]]; then
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
    fi
    results wrk "$out/runs/$name.json" --label "$name" "${rss[@]}" "$@" | tee -a "$points" >&2
}

# A rate ladder of LABEL against URL at the given absolute rates, with oha, the
# stand-in for vegeta (wrk has no fixed rate), and the API's own p99 per step.
ladder() {
    local label=$1 url=$2 rates=$3 rate run server_p99
    : >"$out/ladder-$label.jsonl"
    for rate in ${rates//,/ }; do
        run="$out/runs/ladder-$label-$rate"
        curl -fs "http://$API_ADMIN_ADDR/metrics" >"$run.before"
        "${load[@]}" oha --no-tui --output-format json --worker-threads 1 -z "${BENCH_SECONDS}s" -q "$rate" \
            -c "$CONNECTIONS" "$url" >"$run.json"
        curl -fs "http://$API_ADMIN_ADDR/metrics" >"$run.after"
        server_p99=$(python3 "$here/lib/server_quantile.py" "$run.before" "$run.after")
        results oha "$run.json" --label "$label" --rate "$rate" --extra "server_p99_ms=$server_p99" \
            | tee -a "$out/ladder-$label.jsonl" >&2
    done
}

# One open-loop step of NAME at FACTOR × CAPACITY against URL, 1 s per request as a
# client that gives up; waits for URL to answer again, so that no step inherits the last one's queue.
# The generator is not pinned: the server has a tenth of a core, and on one core of its own
# the generator fell behind at 5 × (a new connection for every request that timed out).
open_loop() {
    local name=$1 factor=$2 capacity=$3 url=$4 rate run="$out/runs/overload-$1-$2x"
    rate=$(bench_py ladder-rates "$points" "$name-capacity" "$factor")
    python3 "$here/lib/openloop.py" attack --rate "$rate" --duration "$BENCH_SECONDS" --timeout 1 \
        --worker-threads 2 --out "$run" "$url" >&2
    results vegeta "$run.json" --engine oha --label "$name" --rate "$rate" \
        --extra "factor=$factor" --extra "capacity=$capacity" | tee -a "$out/overload.jsonl" >&2
    wait_http "$url"
}

# The API and webdis in the same cgroup limit, one after the other, each at multiples of
# its own closed-loop capacity measured here: what each serves past capacity, side by side.
overload() {
    local name url pid capacity factor factors
    : >"$out/overload.jsonl"
    for name in api webdis; do
        if [[ $name == api ]]; then
            url=$api_url pid=$(pid_of api) factors=$OVERLOAD_FACTORS
        else
            url="http://127.0.0.1:$webdis_port/GET/known-key" pid=$(<"$out/services/webdis.pid") factors=2
        fi
        say "overload: $name in $OVERLOAD_CPU of a core, open loop at $factors × its capacity"
        echo "$pid" >"$out/services/bench-overload-$name.cgroup"
        bench_py limit "bench-overload-$name" "$OVERLOAD_CPU" "$OVERLOAD_PERIOD_US" "$pid"
        measure "$name-capacity" "$url"
        capacity=$(bench_py ladder-rates "$points" "$name-capacity" 1)
        for factor in ${factors//,/ }; do
            open_loop "$name" "$factor" "$capacity" "$url"
        done
        bench_py unlimit "bench-overload-$name" "$pid"
        rm "$out/services/bench-overload-$name.cgroup"
    done
}

start_webdis() {
    local password
    password=$(. "$STATE_DIR/passwords.env" && echo "$REPLICA_PASSWORD")
    bench_py render "$here/templates/webdis.json" "$out/services/webdis.json" \
        redis_port="$REPLICA_PORT" redis_password="$password" http_port="$webdis_port" dir="$out/services"
    "${sut[@]}" webdis "$out/services/webdis.json" &
    echo $! >"$out/services/webdis.pid"
    wait_http "http://127.0.0.1:$webdis_port/GET/known-key"
}

# Another API process on the same replica, pinned like the others, with its
# value cache of CACHE_BYTES: NAME PORT ADMIN_PORT CACHE_BYTES [VALUE_BYTES].
start_cached_api() {
    local name=$1 port=$2 admin=$3 password
    password=$(. "$STATE_DIR/passwords.env" && echo "$REPLICA_PASSWORD")
    REDIS_URL="redis://:$password@127.0.0.1:$REPLICA_PORT" LISTEN_ADDR="127.0.0.1:$port" \
        ADMIN_ADDR="127.0.0.1:$admin" CACHE_MAX_BYTES=$4 CACHE_MAX_VALUE_BYTES=${5:-65536} \
        "${sut[@]}" "$repo/target/release/read-api" 2>"$out/services/$name.log" &
    echo $! >"$out/services/$name.pid"
    wait_http "http://127.0.0.1:$admin/readyz"
    until curl -fs "http://127.0.0.1:$admin/metrics" | grep -qx 'read_api_cache_tracking_up 1'; do sleep 0.1; done
}

start_nginx() {
    local dir="$out/services/nginx"
    mkdir -p "$dir"
    bench_py render "$here/templates/nginx.conf" "$dir/nginx.conf" \
        dir="$dir" port="$nginx_port" body="{\"key\":\"known-key\",\"value\":\"$value\"}"
    "${sut[@]}" nginx -c "$dir/nginx.conf" -e "$dir/error.log" &
    echo $! >"$out/services/nginx-master.pid"
    wait_http "http://127.0.0.1:$nginx_port/"
}

# OpenResty on the same replica, one worker as the API has: NAME PORT CACHE_ENTRIES
# (0: lua-resty-redis per request; more: the per-worker cache kept by tracking).
# A keepalive pool of CONNECTIONS per worker, so every request finds an idle connection.
start_openresty() {
    local name=$1 port=$2 dir="$out/services/$1" password
    password=$(. "$STATE_DIR/passwords.env" && echo "$REPLICA_PASSWORD")
    mkdir -p "$dir"
    bench_py render "$here/templates/openresty.conf" "$dir/nginx.conf" dir="$dir" port="$port" \
        lua_dir="$here/openresty" redis_port="$REPLICA_PORT" redis_password="$password" \
        pool="$CONNECTIONS" cache_entries="$3"
    "${sut[@]}" nginx -c "$dir/nginx.conf" -e "$dir/error.log" &
    echo $! >"$out/services/$name.pid"
    wait_http "http://127.0.0.1:$port/v1/keys/known-key"
}

start_hyper_fred() {
    local password
    password=$(. "$STATE_DIR/passwords.env" && echo "$REPLICA_PASSWORD")
    "${sut[@]}" "$repo/target/release/hyper-fred-baseline" "127.0.0.1:$hyper_fred_port" \
        "redis://:$password@127.0.0.1:$REPLICA_PORT" 2>"$out/services/hyper-fred.log" &
    echo $! >"$out/services/hyper-fred.pid"
    wait_http "http://127.0.0.1:$hyper_fred_port/v1/keys/known-key"
}

# The three take turns, ROUNDS times, so that a noisy neighbour on this shared
# machine hits them alike; the report takes each one's median.
sidecar_rounds() {
    local round api replica
    api=$(pid_of api) replica=$(pid_of replica)
    for round in $(seq "$ROUNDS"); do
        say "round $round of $ROUNDS: api, api with its cache, the peers, webdis, nginx"
        bench_py mark "$cpu" api-sidecar-tcp api "$api"
        bench_py mark "$cpu" api-sidecar-tcp replica "$replica"
        measure api-sidecar-tcp "$api_url" "$api"
        bench_py mark "$cpu" api-sidecar-tcp api "$api"
        bench_py mark "$cpu" api-sidecar-tcp replica "$replica"
        measure api-cache-hot "http://127.0.0.1:$cached_port/v1/keys/known-key" "$(<"$out/services/api-cached.pid")"
        measure openresty-tracking "http://127.0.0.1:$openresty_tracking_port/v1/keys/known-key"
        measure hyper-fred "http://127.0.0.1:$hyper_fred_port/v1/keys/known-key" "$(<"$out/services/hyper-fred.pid")"
        measure openresty "http://127.0.0.1:$openresty_port/v1/keys/known-key"
        measure webdis "http://127.0.0.1:$webdis_port/GET/known-key" "$(<"$out/services/webdis.pid")"
        measure nginx-ceiling "http://127.0.0.1:$nginx_port/"
    done
}

redis_benchmark() {
    local password
    say "redis-benchmark GET on the same replica"
    password=$(. "$STATE_DIR/passwords.env" && echo "$REPLICA_PASSWORD")
    REDISCLI_AUTH=$password "${load[@]}" redis-benchmark -h 127.0.0.1 -p "$REPLICA_PORT" \
        -a "$password" -c "$CONNECTIONS" -n "$((BENCH_SECONDS * 60000))" --csv GET known-key 2>/dev/null \
        >"$out/runs/redis-benchmark.csv"
    results redis-benchmark "$out/runs/redis-benchmark.csv" --label redis-benchmark | tee -a "$points" >&2
}

# The cache under a Zipf load over the keys replication_cost seeded, with a
# cache that holds about a tenth of them; the hit ratio from its own metrics.
zipf() {
    local keys=$1 metrics="http://127.0.0.1:$zipf_admin_port/metrics"
    say "API with its cache: Zipf over $keys keys, a cache for about a tenth of them"
    # About 420 bytes an entry, as the cache accounts them, for 100-byte values.
    start_cached_api api-zipf "$zipf_port" "$zipf_admin_port" "$((keys * 42))" 1024
    curl -fs "$metrics" >"$out/runs/api-cache-zipf.before"
    WRK_SCRIPT="$here/lib/wrk-zipf.lua" WRK_JSON="$here/lib/wrk-json.lua" ZIPF_KEYS=$keys \
        measure api-cache-zipf "http://127.0.0.1:$zipf_port" "$(<"$out/services/api-zipf.pid")"
    curl -fs "$metrics" >"$out/runs/api-cache-zipf.after"
    bench_py cache-run "$out/zipf.json" "$out/runs/api-cache-zipf.before" "$out/runs/api-cache-zipf.after" \
        keys="$keys" cache_bytes="$((keys * 42))"
}

replication_cost() {
    local writes=$((BENCH_SECONDS * 5000)) stunnel
    say "replication cost: writes through the master, CPU in stunnel"
    stunnel=$(pid_of stunnel)
    bench_py mark "$cpu" replication-writes stunnel "$stunnel"
    KEYSPACE=$writes VALUE_BYTES=$VALUE_BYTES "$here/seed-keys.sh"
    # Let the replica drain what the master sent before reading the clock.
    sleep 1
    bench_py mark "$cpu" replication-writes stunnel "$stunnel" "$writes"
}

central() {
    local master api
    say "central topology, API reading the master over TLS"
    TOPOLOGY=central topology_up
    master=$(pid_of master) api=$(pid_of api)
    bench_py mark "$cpu" api-central-tls master "$master"
    bench_py mark "$cpu" api-central-tls api "$api"
    measure api-central-tls "$api_url" "$api"
    bench_py mark "$cpu" api-central-tls master "$master"
    bench_py mark "$cpu" api-central-tls api "$api"
    say "rate ladder, central: $rates"
    ladder central "$api_url" "$rates"
}

main() {
    prerequisites
    rm -rf "$out"
    mkdir -p "$out/runs" "$out/services"
    : >"$points"
    trap stop_services EXIT
    value=$(head -c "$VALUE_BYTES" /dev/zero | tr '\0' v)

    say "sidecar topology, API over loopback TCP; webdis on the same replica; nginx"
    TOPOLOGY=sidecar API_REDIS=tcp topology_up
    start_webdis
    start_cached_api api-cached "$cached_port" "$cached_admin_port" 16777216
    start_nginx
    start_openresty openresty "$openresty_port" 0
    start_openresty openresty-tracking "$openresty_tracking_port" 100000
    start_hyper_fred
    sidecar_rounds
    redis_benchmark
    replication_cost
    zipf "$((BENCH_SECONDS * 5000))"
    rates=$(bench_py ladder-rates "$points" api-sidecar-tcp "$LADDER")
    say "rate ladder, sidecar: $rates"
    ladder sidecar "$api_url" "$rates"
    overload

    say "sidecar topology, API over a unix socket"
    TOPOLOGY=sidecar API_REDIS=unix topology_up
    measure api-sidecar-unix "$api_url" "$(pid_of api)"

    central
    "$topology" down >/dev/null

    # Counted, not timed: the regression check of make instructions, whose verdict the report gives.
    say "instructions per request (callgrind): hit and miss"
    python3 "$here/lib/instructions.py" run "$out/instructions.json" >&2
    python3 "$here/lib/instructions.py" check "$out/instructions.json" "$here/instructions-baseline.json" \
        >"$out/instructions.txt" || true

    bench_py costs "$out" sut_cpus="\"$SUT_CPUS\"" seconds_per_point="$BENCH_SECONDS" \
        connections="$CONNECTIONS" ladder="\"$LADDER\"" overload_cpu="$OVERLOAD_CPU" \
        overload_period_us="$OVERLOAD_PERIOD_US"
    "$here/plot.sh" "$out/ladder.svg" "$out/ladder-central.jsonl" "$out/ladder-sidecar.jsonl"
    python3 "$here/lib/bench_report.py" "$out" | tee "$out/report.md"
}

main "$@"
