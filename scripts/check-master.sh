#!/usr/bin/env bash
# Connects to a Redis master the way a pod's replica would (TLS with the CA and
# host name check, then AUTH, then a replication sync) and says whether a
# replica can follow it. Run it before deploying the sidecar topology against a
# hosted master: some hosted services refuse SYNC/PSYNC from outside.
#
#   MASTER_HOST, MASTER_PORT   the master's TLS endpoint (required)
#   MASTER_CA                  PEM file of the CA that signs its certificate (required)
#   MASTER_PASSWORD            its password (optional)
#   MASTER_USER                its ACL user (default: default)
#   CHECK_TIMEOUT              seconds allowed for the sync (default 60)
#
# Exit status: 0 when a replica can follow the master, 1 otherwise.
set -euo pipefail

pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; printf '\nA replica cannot follow %s:%s.\n' "$MASTER_HOST" "$MASTER_PORT"; exit 1; }

main() {
    : "${MASTER_HOST:?check-master: set MASTER_HOST (the master host name its certificate names)}"
    : "${MASTER_PORT:?check-master: set MASTER_PORT (the master TLS port)}"
    : "${MASTER_CA:?check-master: set MASTER_CA (a PEM file with the CA that signs the master certificate)}"
    MASTER_USER=${MASTER_USER:-default}
    CHECK_TIMEOUT=${CHECK_TIMEOUT:-60}
    [[ -r $MASTER_CA ]] || { echo "check-master: MASTER_CA $MASTER_CA is not readable" >&2; exit 1; }
    for tool in openssl redis-cli; do
        command -v "$tool" >/dev/null || { echo "check-master: $tool is missing (make deps)" >&2; exit 1; }
    done

    echo "Checking $MASTER_HOST:$MASTER_PORT as a replica would:"

    tls=$(timeout 15 openssl s_client -connect "$MASTER_HOST:$MASTER_PORT" -servername "$MASTER_HOST" \
        -verify_hostname "$MASTER_HOST" -CAfile "$MASTER_CA" -verify_return_error </dev/null 2>&1) \
        || fail "TLS: $(grep -m1 -E 'verify error|errno|error|refused|timed out' <<<"$tls" || echo 'handshake failed')"
    pass "TLS handshake; certificate signed by $MASTER_CA and valid for $MASTER_HOST"

    cli=(redis-cli --tls --cacert "$MASTER_CA" --sni "$MASTER_HOST" -h "$MASTER_HOST" -p "$MASTER_PORT" --user "$MASTER_USER" --no-auth-warning)
    export REDISCLI_AUTH=${MASTER_PASSWORD:-}
    pong=$(timeout 15 "${cli[@]}" PING 2>&1) || true
    [[ $pong == PONG ]] || fail "AUTH as '$MASTER_USER': $(head -n 1 <<<"${pong:-no answer}")"
    pass "AUTH as '$MASTER_USER' and PING"

    role=$(timeout 15 "${cli[@]}" ROLE 2>&1 | head -n 1) || true
    case $role in
        master) pass "ROLE is master" ;;
        slave) pass "ROLE is a replica itself (replicas can chain, with more lag)" ;;
        *) fail "ROLE: ${role:-no answer} (the user may lack +role; replication needs it too)" ;;
    esac

    rdb=$(mktemp)
    trap 'rm -f "$rdb"' EXIT
    sync=$(timeout "$CHECK_TIMEOUT" "${cli[@]}" --rdb "$rdb" 2>&1) \
        || fail "replication sync refused or failed: $(tail -n 1 <<<"$sync")"
    pass "replication sync: received a snapshot of $(stat -c %s "$rdb") bytes"
    printf '\nA replica can follow %s:%s.\n' "$MASTER_HOST" "$MASTER_PORT"
}

main "$@"
