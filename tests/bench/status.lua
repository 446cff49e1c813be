-- wrk script for bench_scale.py: GET a random user's lab status with a
-- bearer token, and print the summary as one JSON line.
-- Environment: WRK_USERS (count), WRK_PREFIX (username prefix), WRK_TOKEN.
math.randomseed(1)
local users = tonumber(os.getenv("WRK_USERS") or "1")
local prefix = os.getenv("WRK_PREFIX") or "user"
local token = os.getenv("WRK_TOKEN") or ""
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

request = function()
  return wrk.format("GET", "/spawner/v1/labs/" .. prefix .. math.random(0, users - 1))
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
