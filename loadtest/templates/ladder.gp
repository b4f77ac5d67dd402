# Success rate and p99 latency against offered rate, one line per series (loadtest/plot.sh).
set terminal svg size 1100,450 dynamic background rgb 'white' font 'sans,12'
set output '${output}'
set datafile separator ','
set multiplot layout 1,2 title 'read-api: central vs sidecar'
set key bottom left
set xlabel 'offered rate (requests/s)'
set ylabel 'success (% HTTP 200)'
set yrange [0:105]
set grid
plot ${success_plot}
set key top left
set ylabel 'p99 latency (ms)'
set yrange [*:*]
set logscale y
plot ${p99_plot}
unset multiplot
