-- wrk reporting script: one JSON object with what results.py reads.
done = function(summary, latency, requests)
   local ok = summary.requests - summary.errors.status
   io.write(string.format(
      '{"requests": %d, "non_2xx": %d, "socket_errors": %d, "duration_us": %d, ' ..
      '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
      summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
