# Reads/s served against pod count, one line per topology (loadtest/replay.py).
set terminal svg size 700,450 dynamic background rgb 'white' font 'sans,12'
set output '${output}'
set title 'reads/s served against pods'
set xlabel 'pods'
set ylabel 'reads/s'
set key top left
set grid
plot '${data}' using 1:2 with linespoints title 'sidecar', '${data}' using 1:3 with linespoints title 'central'
