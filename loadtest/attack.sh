#!/usr/bin/env bash
# A rate ladder against the read API: one step per rate, one result file per
# step, a report per step, and a summary table of success rate, p50/p95/p99 and
# throughput per rate.
#
# Engine: vegeta when it is on PATH, otherwise oha (installed by
# loadtest/install-oha.sh) with vegeta's semantics through loadtest/lib/openloop.py,
# which writes vegeta's JSON report. Both are normalised to one result format
# (loadtest/lib/results.py); each line says which engine ran.
#
#   BASE_URL     where the API answers (default http://127.0.0.1:8080)
#   TARGET       known-key | random | batch (default known-key; see targets.sh)
#   RATES        comma-separated requests/s (default 1000,5000,10000,20000)
#   DURATION     seconds per step (default 10)
#   CONNECTIONS  vegeta's idle connections per target host (default 64); the rate is
#                held whatever the answers take (open model: vegeta gets no -max-workers)
#   MAX_IN_FLIGHT  oha's cap on requests in flight (default 1.25 × rate × TIMEOUT, up to
#                1000; see lib/openloop.py)
#   TIMEOUT      seconds a request may take (default 5)
#   LABEL        name of this series in results and plots (default: TARGET)
#   OUT          results folder (default target/loadtest/LABEL)
#   ENGINE       auto | vegeta | oha (default auto)
#   LOAD_CPUS    pin the engine to these CPUs (taskset -c)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BASE_URL=${BASE_URL:-http://127.0.0.1:8080}
TARGET=${TARGET:-known-key}
RATES=${RATES:-1000,5000,10000,20000}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-}
TIMEOUT=${TIMEOUT:-5}
LABEL=${LABEL:-$TARGET}
OUT=${OUT:-$here/../target/loadtest/$LABEL}
ENGINE=${ENGINE:-auto}

main() {
    if [[ $ENGINE == auto ]]; then
        if command -v vegeta >/dev/null; then ENGINE=vegeta; else ENGINE=oha; fi
    fi
    case $ENGINE in
        vegeta) command -v vegeta >/dev/null || { echo "attack: ENGINE=vegeta but vegeta is not on PATH" >&2; exit 1; } ;;
        oha)
            "$here/install-oha.sh"
            export PATH="$HOME/.cargo/bin:$PATH"
            ;;
        *) echo "attack: ENGINE must be auto, vegeta or oha, not '$ENGINE'" >&2; exit 2 ;;
    esac
    pin=() cap=()
    [[ -n ${LOAD_CPUS:-} ]] && pin=(taskset -c "$LOAD_CPUS")
    [[ -n $MAX_IN_FLIGHT ]] && cap=(--max-in-flight "$MAX_IN_FLIGHT")

    mkdir -p "$OUT"
    "$here/targets.sh" "$TARGET" "$BASE_URL" >"$OUT/targets.txt"
    summary="$OUT/summary.jsonl"
    : >"$summary"
    echo "attack: engine=$ENGINE target=$TARGET base=$BASE_URL rates=$RATES duration=${DURATION}s -> $OUT" >&2

    IFS=',' read -ra rates <<<"$RATES"
    for rate in "${rates[@]}"; do
        step="$OUT/step-$rate"
        if [[ $ENGINE == vegeta ]]; then
            # No -max-workers: capping workers would make the attack wait for answers
            # (a closed model) instead of holding the rate (the open model the ladder measures).
            "${pin[@]}" vegeta attack -targets="$OUT/targets.txt" -rate="$rate" -duration="${DURATION}s" \
                -timeout="${TIMEOUT}s" -connections="$CONNECTIONS" >"$step.bin"
            vegeta report <"$step.bin" | tee "$step.txt" >&2
            vegeta report -type=json <"$step.bin" >"$step.json"
            python3 "$here/lib/results.py" vegeta "$step.json" --label "$LABEL" --rate "$rate" >>"$summary"
        else
            sed 's/^GET //' "$OUT/targets.txt" >"$OUT/urls.txt"
            "${pin[@]}" python3 "$here/lib/openloop.py" attack --rate "$rate" --duration "$DURATION" \
                --timeout "$TIMEOUT" "${cap[@]}" --out "$step" --urls "$OUT/urls.txt" >&2
            python3 "$here/lib/results.py" vegeta "$step.json" --engine oha --label "$LABEL" --rate "$rate" >>"$summary"
        fi
        tail -n 1 "$summary" >&2
    done

    python3 "$here/lib/results.py" table "$summary" | tee "$OUT/summary.md"
    if [[ $ENGINE == vegeta ]]; then
        # vegeta's own HTML latency plot of the whole ladder.
        # vegeta plot takes result files as arguments (a concatenated stream is not one).
        vegeta plot --title "$LABEL" "$OUT"/step-*.bin >"$OUT/plot.html"
    fi
}

main "$@"
