#!/usr/bin/env bash
# make demo: the sidecar topology on this machine, in the foreground until Ctrl-C.
#
#   DEMO_DETACH=1  start, show, and return, leaving it running (stop: make demo-down)
# Ports and other settings: see scripts/local-topology.sh.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export STATE_DIR=${STATE_DIR:-$repo/target/demo}
export API_ADDR=${API_ADDR:-127.0.0.1:8080} API_ADMIN_ADDR=${API_ADMIN_ADDR:-127.0.0.1:9090}
topology=scripts/local-topology.sh

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

main() {
    step "1/5 Debian packages: redis-server, redis-tools, stunnel4, openssl, curl"
    scripts/install-deps.sh redis-server redis-cli stunnel4 openssl curl
    echo "all present"

    step "2/5 Building the API in release mode (the first build takes a few minutes)"
    cargo build --release --locked -p read-api

    step "3/5 Starting master (TLS) -> stunnel -> replica -> api, as local processes"
    $topology up

    step "4/5 Writing known-key through the master"
    value="hello from the master, written $(date -u +%H:%M:%S)"
    $topology seed known-key "$value"
    deadline=$((SECONDS + 15))
    until [[ $(curl -s "http://$API_ADDR/v1/keys/known-key") == *"$value"* ]]; do
        ((SECONDS < deadline)) || { echo "known-key did not reach the replica within 15s" >&2; exit 1; }
        sleep 0.1
    done

    step "5/5 Reading it back through the API, from the replica"
    echo "\$ curl $API_ADDR/v1/keys/known-key"
    curl -s "http://$API_ADDR/v1/keys/known-key"
    echo
    echo
    echo "Replica state (curl $API_ADMIN_ADDR/metrics):"
    curl -s "http://$API_ADMIN_ADDR/metrics" | grep -E '^read_api_(ready|replica_[a-z_]+) ' | sed 's/^/  /'
    cat <<EOF

Write a new value through the master and watch it arrive:
  make demo-seed KEY=known-key VALUE=changed
  curl $API_ADDR/v1/keys/known-key
Other routes:  curl '$API_ADDR/v1/keys?key=known-key&key=missing'   curl $API_ADMIN_ADDR/readyz
Logs: $STATE_DIR/logs/   Stop: Ctrl-C here, or make demo-down from anywhere.
EOF

    if [[ -n ${DEMO_DETACH:-} ]]; then
        exit 0
    fi

    trap '$topology down; exit 0' INT TERM
    echo
    echo "Running. Press Ctrl-C to stop."
    # Stay up while every process does; a second 'make demo' replaces this one.
    while [[ $($topology status) != *stopped* ]]; do
        sleep 1
    done
    echo "a component stopped (see $STATE_DIR/logs/); stopping the rest" >&2
    $topology down
    exit 1
}

main "$@"
