-- wrk script for bench/load.sh: GET the URL paths listed in a file, round-robin
-- from a different point per thread, and check every answer has the one status
-- this run expects:  wrk ... -s bench/load.lua URL -- STATUS FILE
-- done() prints "key value" lines: answers, wrong statuses, socket errors and
-- latency percentiles.
local threads = {}
function setup(thread)
  thread:set("thread_no", #threads + 1)
  table.insert(threads, thread)
end

local paths = {}
local i = 0
function init(args)
  expected = tonumber(args[1])
  local f = assert(io.open(args[2], "r"))
  for line in f:lines() do
    if #line > 0 then paths[#paths + 1] = line end
  end
  f:close()
  i = ((thread_no or 1) * 7919) % #paths
  wrong = 0
  answered = 0
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= expected then
    wrong = wrong + 1
  end
end

function done(summary, latency, requests)
  local w, a = 0, 0
  for _, t in ipairs(threads) do
    w = w + (t:get("wrong") or 0)
    a = a + (t:get("answered") or 0)
  end
  local e = summary.errors
  io.write(string.format("answered %d\n", a))
  io.write(string.format("wrong_status %d\n", w))
  io.write(string.format("socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("p50_ms %.2f\n", latency:percentile(50) / 1000))
  io.write(string.format("p99_ms %.2f\n", latency:percentile(99) / 1000))
  io.write(string.format("max_ms %.2f\n", latency.max / 1000))
end
