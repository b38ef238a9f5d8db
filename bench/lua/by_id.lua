-- GET BENCH.path .. <a random existing incident_id>.
local ids

function init(args)
  ids = load_ids(BENCH.ids_file)
  math.randomseed(BENCH.seed + thread_index)
end

function request()
  return wrk.format("GET", BENCH.path .. ids[math.random(#ids)])
end
