# One overloaded step second by second (loadtest/replay.py): what share of the offered
# requests got a 200, a 503 or no answer, and how long the 200s took.
set terminal svg size 1100,450 dynamic background rgb 'white' font 'sans,12'
set output '${output}'
set multiplot layout 1,2 title '${title}'
set xlabel 'second of the step'
set ylabel '% of offered'
set yrange [0:105]
set key center right
set grid
plot '${data}' using 1:2 with linespoints title '200', '${data}' using 1:3 with linespoints title '503', '${data}' using 1:4 with linespoints title 'no answer'
set ylabel 'latency of the 200s (ms)'
set yrange [*:*]
set logscale y
set key top left
plot '${data}' using 1:5 with linespoints title 'p50', '${data}' using 1:6 with linespoints title 'p99'
unset multiplot
