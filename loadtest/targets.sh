#!/usr/bin/env bash
# Prints vegeta targets (one `GET URL` a line) for one kind of read:
#   known-key   the one key make demo / make seed write
#   random      KEYSPACE keys key:0 .. key:N-1 (seed them with loadtest/seed-keys.sh)
#   batch       /v1/keys?key=… with BATCH_SIZE random keys from the same keyspace
# Usage: loadtest/targets.sh known-key|random|batch BASE_URL
set -euo pipefail

main() {
    kind=${1:?usage: targets.sh known-key|random|batch BASE_URL}
    base=${2:?usage: targets.sh known-key|random|batch BASE_URL}
    KEYSPACE=${KEYSPACE:-10000}
    BATCH_SIZE=${BATCH_SIZE:-10}
    TARGET_LINES=${TARGET_LINES:-10000}

    case $kind in
        known-key) echo "GET $base/v1/keys/known-key" ;;
        random) awk -v n="$KEYSPACE" -v base="$base" 'BEGIN { for (i = 0; i < n; i++) printf "GET %s/v1/keys/key:%d\n", base, i }' ;;
        batch)
            awk -v n="$KEYSPACE" -v size="$BATCH_SIZE" -v lines="$TARGET_LINES" -v base="$base" 'BEGIN {
                srand(42)
                for (l = 0; l < lines; l++) {
                    q = ""
                    for (j = 0; j < size; j++) q = q (j ? "&" : "") "key=key:" int(rand() * n)
                    printf "GET %s/v1/keys?%s\n", base, q
                }
            }'
            ;;
        *) echo "targets: kind must be known-key, random or batch, not '$kind'" >&2; exit 2 ;;
    esac
}

main "$@"
