-- PATCH status=acknowledged, each request on the next open incident of this thread's share.
local body = '{"status": "acknowledged"}'
local ids
local sent = 0

function init(args)
  ids = load_ids(BENCH.ids_file)
end

function request()
  sent = sent + 1
  -- Wrapping around would re-acknowledge (a no-op 200); run.py provisions enough and checks.
  return wrk.format("PATCH", BENCH.path .. ids[(sent - 1) % #ids + 1], JSON_HEADERS, body)
end
