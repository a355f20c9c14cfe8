-- wrk script of `make bench` (bench/http.py): POST one body, count non-2xx answers,
-- and print one line of JSON at the end for bench/http.py to read.
--
--   BENCH_BODY='{"dataframe_records": [...]}' wrk -t 2 -c 64 -d 10s --latency \
--     -s bench/wrk_report.lua http://127.0.0.1:8000/score
--
-- The last line of output is `WRK_JSON {...}`: requests, duration_us, bytes,
-- non_2xx (every answer outside 200-299, counted per thread in response()), wrk's
-- socket errors (connect/read/write/timeout, and status = answers >= 400), and latency
-- in microseconds (mean, max, p50, p90, p99, p99.9). Only reads and counts; it never
-- changes a request beyond setting the method, the body and the Content-Type.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"dataframe_records": [{"wt": 2.62, "hp": 110, "qsec": 16.46}]}'
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  non_2xx = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, requests)
  local non_2xx_total = 0
  for _, thread in ipairs(threads) do
    non_2xx_total = non_2xx_total + thread:get("non_2xx")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "non_2xx": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes, non_2xx_total,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
