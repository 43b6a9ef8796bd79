-- wrk script for bench/s3.sh: GET the presigned URLs listed in the file named by
-- $URLS, round robin (their host part is dropped: wrk connects to the URL given
-- on its command line, which has the same host).
local paths = {}
local i = 0

init = function(args)
  for line in io.lines(os.getenv("URLS")) do
    local p = line:gsub("^https?://[^/]+", "")
    table.insert(paths, p)
  end
  i = math.random(#paths)
end

request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end

response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\n")
  end
end
