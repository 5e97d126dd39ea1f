-- wrk script for tarea's benchmark: POSTs one JSON body, counts what comes back,
-- and prints the run as one JSON line for bench/wrk.py to parse.
--
-- The body comes from the environment (BENCH_WRK_BODY), the path from the URL
-- given to wrk. Script arguments (after "--"):
--   1. stop after this many responses (0: run for wrk's duration);
--   2. print a progress line every this many responses (0: never).
-- Each response is counted by status code; a 2xx whose body does not say
-- "status": "succeeded" is counted as a failed task. Output lines are prefixed
-- BENCH_PROGRESS, BENCH_LIMIT (the response limit was reached) and BENCH_JSON.

wrk.method = "POST"
wrk.body = os.getenv("BENCH_WRK_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  limit = tonumber(args[1]) or 0
  every = tonumber(args[2]) or 0
  responses = 0
  failed_tasks = 0
  codes = {}
end

function response(status, headers, body)
  responses = responses + 1
  local key = tostring(status)
  codes[key] = (codes[key] or 0) + 1
  if status >= 200 and status < 300
      and not string.find(body, '"status"%s*:%s*"succeeded"') then
    failed_tasks = failed_tasks + 1
  end
  if every > 0 and responses % every == 0 then
    io.write("BENCH_PROGRESS ", responses, "\n")
    io.flush()
  end
  if limit > 0 and responses == limit then
    io.write("BENCH_LIMIT ", responses, "\n")
    io.flush()
    wrk.thread:stop()
  end
end

local function json_codes(all)
  local parts = {}
  for code, count in pairs(all) do
    table.insert(parts, string.format('"%s":%d', code, count))
  end
  table.sort(parts)
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local all, failed, counted = {}, 0, 0
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("codes") or {}) do
      all[code] = (all[code] or 0) + count
    end
    failed = failed + (thread:get("failed_tasks") or 0)
    counted = counted + (thread:get("responses") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"responses":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"codes":%s,"failed_tasks":%d,'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.duration, summary.requests, summary.bytes, counted,
    e.connect, e.read, e.write, e.status, e.timeout,
    json_codes(all), failed,
    latency.min, latency.mean, latency.max,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency:percentile(99.9)))
  io.flush()
end
