-- GET BENCH.path .. "?since=" .. <now − BENCH.since_days days>, a new value every request: the panel
-- of a dashboard showing "the last 30 days", which no answer reuse can serve. The sub-second part
-- counts the requests of this thread, interleaved with the other threads', so no two are alike.
local sent = 0

function init(args)
  math.randomseed(BENCH.seed + thread_index)
end

function request()
  sent = sent + 1
  local micros = (sent * BENCH.threads + thread_index) % 1000000
  local since = os.time() - BENCH.since_days * 86400
  return wrk.format("GET", string.format("%s?since=%s.%06dZ", BENCH.path, os.date("!%Y-%m-%dT%H:%M:%S", since), micros))
end
