#!/usr/bin/env python3
"""The API's own latency quantile over an interval, from two scrapes of /metrics.

Usage: server_quantile.py BEFORE AFTER [QUANTILE] [ROUTE]
Prints the upper bound, in ms, of the histogram bucket that holds the quantile
(default 0.99) of read_api_http_request_duration_seconds for ROUTE
(default /v1/keys/{key}) between the two scrapes. Server-side time excludes
the load generator's own pacing and the kernel's queues.
"""

import re
import sys


def buckets(path, route):
    pattern = re.compile(
        r'^read_api_http_request_duration_seconds_bucket\{route="' + re.escape(route) + r'",le="([^"]+)"\} (\S+)$'
    )
    found = {}
    for line in open(path):
        m = pattern.match(line.strip())
        if m:
            found[float(m.group(1))] = float(m.group(2))
    return found


def main(before, after, quantile=0.99, route="/v1/keys/{key}"):
    start, end = buckets(before, route), buckets(after, route)
    counts = sorted((le, end[le] - start.get(le, 0.0)) for le in end)
    total = counts[-1][1] if counts else 0
    if not total:
        raise SystemExit("server_quantile: no requests between the two scrapes")
    for le, cumulative in counts:
        if cumulative >= quantile * total:
            print(f"{le * 1000:g}")
            return


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(float(a) if i == 0 else a for i, a in enumerate(sys.argv[3:])))
