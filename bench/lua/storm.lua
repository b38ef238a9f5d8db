-- An alert storm: POST creates spread over BENCH.storm_keys dedup keys, each key with its own service and a
-- fixed severity (so no grouped request raises one), one new alert on half of them as create.lua.
-- Almost every request is grouped.

function init(args)
  math.randomseed(BENCH.seed + thread_index)
end

function request()
  local n = math.random(0, BENCH.storm_keys - 1)
  local alerts = ""
  if math.random() < 0.5 then alerts = '"' .. random_uuid() .. '"' end
  local body = string.format(
    '{"title": "Dependency down behind storm-%02d", "service": "storm-svc-%02d", "severity": "%s", ' ..
    '"dedup_key": "storm-%02d", "alert_ids": [%s]}',
    n, n, SEVERITIES[n % #SEVERITIES + 1], n, alerts)
  return wrk.format("POST", BENCH.path, JSON_HEADERS, body)
end
