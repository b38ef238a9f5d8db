-- Shared by every scenario (run.py puts a BENCH table of settings in front of it):
-- each thread's share of an id file, and one machine-readable summary line at the end.

local threads_seen = 0

SEVERITIES = {"critical", "high", "medium", "low"}
JSON_HEADERS = {["Content-Type"] = "application/json"}

function setup(thread)
  thread:set("thread_index", threads_seen)
  threads_seen = threads_seen + 1
end

-- This thread's share of the ids, so that two threads never pick the same sequential id.
function load_ids(path)
  local ids, k = {}, 0
  for line in io.lines(path) do
    if k % BENCH.threads == thread_index then ids[#ids + 1] = line end
    k = k + 1
  end
  return ids
end

function random_uuid()
  return string.format("%08x-%04x-4%03x-%04x-%04x%08x",
    math.random(0, 0x7fffffff), math.random(0, 0xffff), math.random(0, 0xfff),
    0x8000 + math.random(0, 0x3fff), math.random(0, 0xffff), math.random(0, 0x7fffffff))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %.0f, "duration_us": %.0f, "p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, ' ..
    '"max_us": %.0f, "errors": {"connect": %.0f, "read": %.0f, "write": %.0f, "status": %.0f, "timeout": %.0f}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end

-- A paced run (BENCH.delay_ms set): each connection waits that long after each answer, so that
-- connections × 1000 / delay_ms bounds the rate (the latency of each answer keeps it a little under).
if BENCH.delay_ms then
  function delay() return BENCH.delay_ms end
end
