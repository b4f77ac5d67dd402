#!/usr/bin/env bash
# Connects to a Redis master the way a pod's replica would and says whether a
# replica can follow it. Run it before deploying the sidecar topology against a
# hosted master: some hosted services refuse PSYNC from outside. The steps:
#
#   1. TLS handshake (openssl): the chain verified against MASTER_CA and the
#      certificate valid for MASTER_HOST, as stunnel's verifyChain and checkHost.
#   2. AUTH as the replica's user (masteruser/masterauth in the pod).
#   3. REPLCONF capa eof capa psync2: what a replica announces.
#   4. PSYNC ? -1: the master offers a full resync, and the snapshot is read to
#      its end (within CHECK_TIMEOUT).
#   5. PSYNC from that replication ID and offset on a new connection, as after
#      a dropped tunnel: a partial resync (+CONTINUE); if the master answers
#      FULLRESYNC instead, a note says every dropped tunnel costs a full sync.
#
# Steps 2 to 5 speak the replication protocol itself (scripts/lib/replica_handshake.py):
# `redis-cli --rdb` sends SYNC, which a user with only the rules a replica needs
# (+psync +replconf +ping) may not run. Nothing is written to the master.
#
#   MASTER_HOST, MASTER_PORT   the master's TLS endpoint (required)
#   MASTER_CA                  PEM file of the CA that signs its certificate (required)
#   MASTER_USER                the replica's ACL user (default: default)
#   MASTER_PASSWORD            its password (optional)
#   MASTER_REPLICA_USER, MASTER_REPLICA_PASSWORD
#                              when set, used instead of MASTER_USER and MASTER_PASSWORD,
#                              as make master-secret stores them for the replica
#   CHECK_TIMEOUT              seconds allowed for the snapshot (default 60)
#
# Exit status: 0 when a replica can follow the master, 1 otherwise.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)

pass() { printf '  ok    %s\n' "$*"; }
cannot() { printf '\nA replica cannot follow %s:%s.\n' "$MASTER_HOST" "$MASTER_PORT"; exit 1; }
fail() { printf '  FAIL  %s\n' "$*"; cannot; }

main() {
    : "${MASTER_HOST:?check-master: set MASTER_HOST (the master host name its certificate names)}"
    : "${MASTER_PORT:?check-master: set MASTER_PORT (the master TLS port)}"
    : "${MASTER_CA:?check-master: set MASTER_CA (a PEM file with the CA that signs the master certificate)}"
    if [[ -n ${MASTER_REPLICA_USER:-} && -z ${MASTER_REPLICA_PASSWORD:-} ]]; then
        echo "check-master: MASTER_REPLICA_USER needs MASTER_REPLICA_PASSWORD" >&2
        exit 1
    fi
    local user=${MASTER_REPLICA_USER:-${MASTER_USER:-default}}
    local password=${MASTER_REPLICA_PASSWORD:-${MASTER_PASSWORD:-}}
    [[ -r $MASTER_CA ]] || { echo "check-master: MASTER_CA $MASTER_CA is not readable" >&2; exit 1; }
    command -v python3 >/dev/null || { echo "check-master: python3 is missing (make deps)" >&2; exit 1; }

    echo "Checking $MASTER_HOST:$MASTER_PORT as a replica would:"

    # Without openssl (make doctor's Job in a Python image), the handshake below
    # verifies the chain and the host name itself.
    if command -v openssl >/dev/null; then
        tls=$(timeout 15 openssl s_client -connect "$MASTER_HOST:$MASTER_PORT" -servername "$MASTER_HOST" \
            -verify_hostname "$MASTER_HOST" -CAfile "$MASTER_CA" -verify_return_error </dev/null 2>&1) \
            || fail "TLS: $(grep -m1 -E 'verify error|errno|error|refused|timed out' <<<"$tls" || echo 'handshake failed')"
        pass "TLS handshake; certificate signed by $MASTER_CA and valid for $MASTER_HOST"
    fi

    MASTER_HOST=$MASTER_HOST MASTER_PORT=$MASTER_PORT MASTER_CA=$MASTER_CA MASTER_USER=$user \
        MASTER_PASSWORD=$password CHECK_TIMEOUT=${CHECK_TIMEOUT:-60} python3 "$repo/scripts/lib/replica_handshake.py" || cannot
    printf '\nA replica can follow %s:%s.\n' "$MASTER_HOST" "$MASTER_PORT"
}

main "$@"
