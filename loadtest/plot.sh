#!/usr/bin/env bash
# Plots success rate and p99 latency against offered rate, one line per series,
# as SVG (gnuplot).
# Usage: loadtest/plot.sh OUT.svg SUMMARY.jsonl...   (summaries from attack.sh or make bench)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
join() { local IFS=','; echo "$*"; }

main() {
    out=${1:?usage: plot.sh OUT.svg SUMMARY.jsonl...}
    shift
    (($#)) || { echo "plot: give at least one summary.jsonl" >&2; exit 2; }
    command -v gnuplot >/dev/null || "$here/../scripts/install-deps.sh" gnuplot

    data=$(mktemp -d)
    trap 'rm -rf "$data"' EXIT
    python3 "$here/lib/results.py" csv "$@" | tail -n +2 | sort -t, -k1,1 -k2,2n >"$data/all.csv"
    labels=$(cut -d, -f1 "$data/all.csv" | sort -u)
    success_plot=() p99_plot=()
    for label in $labels; do
        grep "^$label," "$data/all.csv" >"$data/$label.csv"
        success_plot+=("'$data/$label.csv' using 2:3 with linespoints title '$label'")
        p99_plot+=("'$data/$label.csv' using 2:4 with linespoints title '$label'")
    done

    python3 "$here/lib/bench.py" render "$here/templates/ladder.gp" "$data/ladder.gp" output="$out" \
        success_plot="$(join "${success_plot[@]}")" p99_plot="$(join "${p99_plot[@]}")"
    gnuplot "$data/ladder.gp"
    echo "plot: wrote $out" >&2
}

main "$@"
