#!/usr/bin/env bash
# Plots success rate and p99 latency against offered rate, one line per series,
# as SVG (gnuplot).
# Usage: loadtest/plot.sh OUT.svg SUMMARY.jsonl...   (summaries from attack.sh or make bench)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
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
join() { local IFS=','; echo "$*"; }

gnuplot <<GP
set terminal svg size 1100,450 dynamic background rgb 'white' font 'sans,12'
set output '$out'
set datafile separator ','
set multiplot layout 1,2 title 'read-api: central vs sidecar'
set key bottom left
set xlabel 'offered rate (requests/s)'
set ylabel 'success (% HTTP 200)'
set yrange [0:105]
set grid
plot $(join "${success_plot[@]}")
set key top left
set ylabel 'p99 latency (ms)'
set yrange [*:*]
set logscale y
plot $(join "${p99_plot[@]}")
unset multiplot
GP
echo "plot: wrote $out" >&2
