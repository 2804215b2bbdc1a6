-- Shared by every benchmark script (bench/harness.py puts it in front of the named one):
-- counts answers by status in each thread and prints one machine-readable report line.
-- Latencies are wrk's own (microseconds); the harness turns them into milliseconds.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

statuses = {}  -- global: done() reads it from each thread with thread:get

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local function status_json()
  local counts, parts = {}, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"statuses":%s,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f}\n',
    summary.requests, summary.duration, summary.bytes, status_json(),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
