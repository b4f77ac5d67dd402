#!/usr/bin/env bash
# Writes KEYSPACE keys (key:0 .. key:N-1, VALUE_BYTES each) and known-key through
# the master, in one pipelined stream.
#   SEED_VIA=local    the local topology (make demo, make bench; STATE_DIR as they use)
#   SEED_VIA=cluster  the in-cluster master (make deploy-master), through kubectl exec
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
KEYSPACE=${KEYSPACE:-10000}
VALUE_BYTES=${VALUE_BYTES:-100}
SEED_VIA=${SEED_VIA:-local}
NAMESPACE=${NAMESPACE:-read-api}

commands() {
    awk -v n="$KEYSPACE" -v size="$VALUE_BYTES" 'BEGIN {
        value = sprintf("%*s", size, ""); gsub(/ /, "v", value)
        for (i = 0; i <= n; i++) {
            key = (i == n) ? "known-key" : "key:" i
            printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(key), key, length(value), value
        }
    }'
}

main() {
    case $SEED_VIA in
        local) commands | "$repo/scripts/local-topology.sh" master-cli --pipe ;;
        cluster)
            commands | kubectl -n "$NAMESPACE" exec -i statefulset/redis-master -c redis -- \
                sh -c 'redis-cli --tls --cacert /etc/redis/tls/ca.crt -h localhost -p 6380 --pipe'
            ;;
        *) echo "seed-keys: SEED_VIA must be local or cluster, not '$SEED_VIA'" >&2; exit 2 ;;
    esac
    echo "seed-keys: wrote $KEYSPACE keys of $VALUE_BYTES bytes and known-key through the master" >&2
}

main "$@"
