-- wrk script: GET a list of URL paths (one per line, file named after `--`),
-- round-robin, each wrk thread starting at a different point of the list.
--   wrk -t2 -c64 -d10s -s bench/narinfo.lua http://127.0.0.1:PORT -- paths.txt
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local paths = {}
local i = 0
function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    if #line > 0 then paths[#paths + 1] = line end
  end
  f:close()
  i = ((thread_no or 1) * 104729) % #paths
end

function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
