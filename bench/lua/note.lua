-- PATCH a note onto a random existing incident.
local body = '{"note": "Mitigated by scaling out; watching the error rate.", "author": "load-benchmark"}'
local ids

function init(args)
  ids = load_ids(BENCH.ids_file)
  math.randomseed(BENCH.seed + thread_index)
end

function request()
  return wrk.format("PATCH", BENCH.path .. ids[math.random(#ids)], JSON_HEADERS, body)
end
