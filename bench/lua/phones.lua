-- Phones as the contract asks them to behave: each wrk connection is one phone polling /v1/nearby,
-- waiting next_poll_ms (from the answer) after a 200 and Retry-After seconds after a 503, with 10 percent
-- jitter so that phones do not march in step. The first poll of each phone comes at a random moment in
-- its first interval. With "closed" as the fourth argument no phone ever waits: wrk's plain closed loop,
-- which measures capacity. Counts answers by kind; done() prints one RESULT line the scripts read:
--   RESULT requests duration_us p50_us p99_us ok_200 shed_503 with_retry_after other_status socket_errors max_us
--          accepted_p99_us
-- wrk times every answer in one histogram. accepted_p99_us is its percentile at (shed + 0.99 ok) / (shed + ok):
-- at most |shed| of the answers below that rank are 503s, so at least 0.99 ok of them are 200s, and the value is
-- an upper bound on the p99 of the accepted (200) answers alone, whatever the 503s took.
--   wrk -t1 -c<phones> -d<s>s -s bench/lua/phones.lua http://127.0.0.1:<port> -- <first_interval_ms> [lat lng [closed]]
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  first_ms = tonumber(args[1] or "5000")
  lat, lng = args[2] or "22.5329", args[3] or "113.9305"
  closed = args[4] == "closed"
  ok, shed, retry_after, other, wait_ms = 0, 0, 0, 0, -1
  path = "/v1/nearby?lat=" .. lat .. "&lng=" .. lng
end

function request()
  return wrk.format("GET", path)
end

function delay()
  if closed then
    return 0
  end
  if wait_ms < 0 then
    wait_ms = 0
    return math.random(0, first_ms)
  end
  return wait_ms * (0.9 + 0.2 * math.random())
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    wait_ms = tonumber(string.match(body, '"next_poll_ms":(%d+)')) or first_ms
  elseif status == 503 then
    shed = shed + 1
    local after = tonumber(headers["Retry-After"])
    if after then
      retry_after = retry_after + 1
      wait_ms = after * 1000
    else
      wait_ms = first_ms
    end
  else
    other = other + 1
    wait_ms = first_ms
  end
end

function done(summary, latency, requests)
  local o, s, r, x = 0, 0, 0, 0
  for _, t in ipairs(threads) do
    o, s, r, x = o + t:get("ok"), s + t:get("shed"), r + t:get("retry_after"), x + t:get("other")
  end
  local e = summary.errors
  local accepted_p99 = 0
  if o > 0 then
    accepted_p99 = latency:percentile(100 * (s + 0.99 * o) / (s + o))
  end
  io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), o, s, r, x, e.connect + e.read + e.write + e.timeout,
    latency.max, accepted_p99))
  io.write(string.format("SOCKET connect=%d read=%d write=%d timeout=%d\n", e.connect, e.read, e.write, e.timeout))
end
