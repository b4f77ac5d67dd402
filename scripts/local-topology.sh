#!/usr/bin/env bash
# Runs the kit's topology as local processes on loopback, from the same config
# files and start scripts that deploy/ mounts into pods:
#
#   sidecar: api -> redis replica -> stunnel client -> TLS redis master
#   central: api -> TLS redis master
#
# Usage: scripts/local-topology.sh up|down|status|seed KEY VALUE|env
#
# Settings (environment):
#   STATE_DIR        pids, logs, certificates, passwords (default target/demo)
#   TOPOLOGY         sidecar or central (default sidecar)
#   MASTER_PORT      TLS port of the master (default 6380)
#   STUNNEL_PORT     local end of the tunnel (default 6390)
#   REPLICA_PORT     the replica (default 6379)
#   API_ADDR         public listener (default 127.0.0.1:8080)
#   API_ADMIN_ADDR   probes and metrics (default 127.0.0.1:9090)
#   API_BIN          the read-api binary (default target/release/read-api)
#   API_REDIS        tcp or unix: how the api reaches the replica (default tcp)
#   TRUST_CA_FILE    CA that stunnel and the api trust (default: the CA that signed the master)
#   SUT_CPUS         when set, pin redis, stunnel and the api to these CPUs (taskset -c)
#   READY_TIMEOUT    seconds to wait for /readyz (default 60)
# Every other variable the api reads (WORKERS, REDIS_POOL_SIZE, ...) passes through;
# SHUTDOWN_DELAY_SECONDS defaults to 0 here: no load balancer is catching up.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
config="$repo/deploy/config"
STATE_DIR=${STATE_DIR:-$repo/target/demo}
TOPOLOGY=${TOPOLOGY:-sidecar}
MASTER_PORT=${MASTER_PORT:-6380}
STUNNEL_PORT=${STUNNEL_PORT:-6390}
REPLICA_PORT=${REPLICA_PORT:-6379}
API_ADDR=${API_ADDR:-127.0.0.1:8080}
API_ADMIN_ADDR=${API_ADMIN_ADDR:-127.0.0.1:9090}
API_BIN=${API_BIN:-$repo/target/release/read-api}
API_REDIS=${API_REDIS:-tcp}
READY_TIMEOUT=${READY_TIMEOUT:-60}

say() { printf '%s\n' "local-topology: $*" >&2; }
die() { say "$*"; down_on_failure; exit 1; }
down_on_failure() { [[ ${cleanup_on_failure:-} ]] && down >/dev/null || true; }

pin=()
[[ -n ${SUT_CPUS:-} ]] && pin=(taskset -c "$SUT_CPUS")

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Starts a named process in the background, logging to $STATE_DIR/logs/NAME.log.
start() {
    local name=$1
    shift
    mkdir -p "$STATE_DIR/logs" "$STATE_DIR/run/$name"
    nohup "${pin[@]}" "$@" >"$STATE_DIR/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE_DIR/run/$name.pid"
}

# True while the process in NAME.pid is alive and is still the one we started.
alive() {
    local pidfile="$STATE_DIR/run/$1.pid" pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ -r /proc/$pid/cmdline && $(tr '\0' ' ' <"/proc/$pid/cmdline") == *"$2"* ]]
}

# Right after start the pid may not have exec'd its program yet: only ask if it lives.
running() { kill -0 "$(<"$STATE_DIR/run/$1.pid")" 2>/dev/null; }

wait_port() {
    local name=$1 port=$2 deadline=$((SECONDS + 15))
    until port_in_use "$port"; do
        running "$name" || die "$name exited at start; its log ($STATE_DIR/logs/$name.log) ends with:
$(tail -n 15 "$STATE_DIR/logs/$name.log" 2>/dev/null)"
        ((SECONDS < deadline)) || die "$name did not listen on port $port within 15s; see $STATE_DIR/logs/$name.log"
        sleep 0.1
    done
}

# Names and what identifies their command line, in the order they are stopped.
components=("api:read-api" "replica:redis" "stunnel:stunnel" "master:redis")

down() {
    local entry name pattern pid stopped=0
    for entry in "${components[@]}"; do
        name=${entry%%:*} pattern=${entry#*:}
        if alive "$name" "$pattern"; then
            pid=$(<"$STATE_DIR/run/$name.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            stopped=$((stopped + 1))
        fi
        rm -f "$STATE_DIR/run/$name.pid"
    done
    say "stopped $stopped process(es) started from $STATE_DIR"
}

# MASTER_PASSWORD: the master's admin (default user); REPLICA_PASSWORD: the
# replica's own; MASTER_REPLICA_PASSWORD: the master's ACL user "replica", which
# the replica follows as, as in the sidecar pod.
passwords() {
    local file="$STATE_DIR/passwords.env" name
    mkdir -p "$STATE_DIR"
    for name in MASTER_PASSWORD REPLICA_PASSWORD MASTER_REPLICA_PASSWORD; do
        grep -q "^$name=" "$file" 2>/dev/null \
            || (umask 077; printf '%s=%s\n' "$name" "$(openssl rand -hex 16)" >>"$file")
    done
    # shellcheck source=/dev/null
    source "$file"
}

master_cli() {
    REDISCLI_AUTH=$MASTER_PASSWORD redis-cli --tls --cacert "$STATE_DIR/certs/ca.crt" \
        -h localhost -p "$MASTER_PORT" "$@"
}

up() {
    case $TOPOLOGY in sidecar | central) ;; *) die "TOPOLOGY must be sidecar or central, got '$TOPOLOGY'" ;; esac
    case $API_REDIS in tcp | unix) ;; *) die "API_REDIS must be tcp or unix, got '$API_REDIS'" ;; esac
    for tool in redis-server redis-cli stunnel openssl curl; do
        command -v "$tool" >/dev/null || die "$tool is missing: run 'make deps' (or scripts/install-deps.sh $tool)"
    done
    [[ -x $API_BIN ]] || die "no api binary at $API_BIN: run 'make build'"

    # A previous run from this state dir is stopped first, so up can be rerun.
    down >/dev/null
    local ports=("MASTER_PORT:$MASTER_PORT" "API_ADDR:${API_ADDR##*:}" "API_ADMIN_ADDR:${API_ADMIN_ADDR##*:}")
    [[ $TOPOLOGY == sidecar ]] && ports+=("STUNNEL_PORT:$STUNNEL_PORT" "REPLICA_PORT:$REPLICA_PORT")
    local entry
    for entry in "${ports[@]}"; do
        port_in_use "${entry#*:}" && die "port ${entry#*:} (${entry%%:*}) is already in use; stop what holds it or set ${entry%%:*}"
    done

    # Whatever fails from here on, nothing started is left behind.
    cleanup_on_failure=1
    trap 'down_on_failure' ERR
    passwords
    CERTS_DIR="$STATE_DIR/certs" MASTER_HOSTS=localhost,127.0.0.1 "$repo/scripts/gen-certs.sh" >&2
    local certs="$STATE_DIR/certs"
    local trust=${TRUST_CA_FILE:-$certs/ca.crt}

    say "starting the TLS master on localhost:$MASTER_PORT"
    mkdir -p "$STATE_DIR/master" "$STATE_DIR/master-users"
    (umask 077; printf '%s' "$MASTER_REPLICA_PASSWORD" >"$STATE_DIR/master-users/replica")
    REDIS_PASSWORD=$MASTER_PASSWORD REDIS_RUN_DIR="$STATE_DIR/run/master" \
        REDIS_USERS_FILE="$config/redis-master/acl-users.conf" REDIS_USERS_DIR="$STATE_DIR/master-users" start master \
        sh "$config/redis-start/start-redis.sh" "$config/redis-master/redis-master.conf" \
        --tls-port "$MASTER_PORT" --bind 127.0.0.1 --dir "$STATE_DIR/master" \
        --tls-cert-file "$certs/master.crt" --tls-key-file "$certs/master.key" \
        --tls-ca-cert-file "$certs/ca.crt"
    wait_port master "$MASTER_PORT"

    local redis_url
    if [[ $TOPOLOGY == sidecar ]]; then
        say "starting the stunnel client on 127.0.0.1:$STUNNEL_PORT -> localhost:$MASTER_PORT"
        MASTER_HOST=localhost MASTER_PORT=$MASTER_PORT STUNNEL_CA_FILE="$trust" \
            STUNNEL_ACCEPT="127.0.0.1:$STUNNEL_PORT" STUNNEL_RUN_DIR="$STATE_DIR/run/stunnel" \
            start stunnel sh "$config/stunnel/start-stunnel.sh" "$config/stunnel/stunnel.conf"
        wait_port stunnel "$STUNNEL_PORT"

        say "starting the replica on 127.0.0.1:$REPLICA_PORT"
        mkdir -p "$STATE_DIR/replica"
        REDIS_PASSWORD=$REPLICA_PASSWORD MASTER_USER=replica MASTER_PASSWORD=$MASTER_REPLICA_PASSWORD \
            REDIS_RUN_DIR="$STATE_DIR/run/replica" start replica \
            sh "$config/redis-start/start-redis.sh" "$config/redis-replica/redis-replica.conf" \
            --port "$REPLICA_PORT" --replicaof 127.0.0.1 "$STUNNEL_PORT" \
            --unixsocket "$STATE_DIR/run/replica.sock" --dir "$STATE_DIR/replica"
        wait_port replica "$REPLICA_PORT"
        if [[ $API_REDIS == unix ]]; then
            redis_url="redis+unix://:$REPLICA_PASSWORD@localhost$STATE_DIR/run/replica.sock"
        else
            redis_url="redis://:$REPLICA_PASSWORD@127.0.0.1:$REPLICA_PORT"
        fi
    else
        redis_url="rediss://:$MASTER_PASSWORD@localhost:$MASTER_PORT"
        export REDIS_CA_FILE=$trust
    fi

    say "starting the api on $API_ADDR (admin $API_ADMIN_ADDR)"
    REDIS_URL=$redis_url LISTEN_ADDR=$API_ADDR ADMIN_ADDR=$API_ADMIN_ADDR \
        LOG_FORMAT=${LOG_FORMAT:-text} SHUTDOWN_DELAY_SECONDS=${SHUTDOWN_DELAY_SECONDS:-0} start api "$API_BIN"

    local deadline=$((SECONDS + READY_TIMEOUT))
    until curl -fsS -o /dev/null "http://$API_ADMIN_ADDR/readyz" 2>/dev/null; do
        running api || die "the api exited; its log ends with:
$(tail -n 15 "$STATE_DIR/logs/api.log")"
        ((SECONDS < deadline)) || die "the api was not ready within ${READY_TIMEOUT}s: $(curl -s "http://$API_ADMIN_ADDR/readyz")"
        sleep 0.2
    done
    write_env
    say "$TOPOLOGY topology ready: api http://$API_ADDR, admin http://$API_ADMIN_ADDR"
}

# What other tools need to talk to this topology.
write_env() {
    cat >"$STATE_DIR/topology.env" <<EOF
TOPOLOGY=$TOPOLOGY
API_ADDR=$API_ADDR
API_ADMIN_ADDR=$API_ADMIN_ADDR
MASTER_PORT=$MASTER_PORT
STUNNEL_PORT=$STUNNEL_PORT
REPLICA_PORT=$REPLICA_PORT
CA_FILE=$STATE_DIR/certs/ca.crt
EOF
}

status() {
    local entry name pattern
    for entry in "${components[@]}"; do
        name=${entry%%:*} pattern=${entry#*:}
        if alive "$name" "$pattern"; then
            printf '%-8s running (pid %s)\n' "$name" "$(<"$STATE_DIR/run/$name.pid")"
        else
            printf '%-8s stopped\n' "$name"
        fi
    done
}

main() {
    case ${1:-} in
        up) up ;;
        down) down ;;
        status) status ;;
        seed)
            [[ $# -eq 3 ]] || die "usage: $0 seed KEY VALUE"
            passwords
            master_cli SET "$2" "$3" >/dev/null
            say "wrote $2 through the master"
            ;;
        master-cli) shift; passwords; master_cli "$@" ;;
        *) die "usage: $0 up|down|status|seed KEY VALUE|master-cli ARGS..." ;;
    esac
}

main "$@"
