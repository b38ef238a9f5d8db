-- POST a new incident to BENCH.path: random service and severity, one linked alert on half of them.

function init(args)
  math.randomseed(BENCH.seed + thread_index)
end

function request()
  local n = math.random(0, 49)
  local alerts = ""
  if math.random() < 0.5 then alerts = '"' .. random_uuid() .. '"' end
  local body = string.format(
    '{"title": "Error rate above 5%% on svc-%02d", "service": "svc-%02d", "severity": "%s", ' ..
    '"description": "Raised by the load benchmark.", "alert_ids": [%s]}',
    n, n, SEVERITIES[math.random(#SEVERITIES)], alerts)
  return wrk.format("POST", BENCH.path, JSON_HEADERS, body)
end
