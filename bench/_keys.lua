-- wrk script: send "Authorization: Bearer <key>" cycling through the keys in $BENCH_KEYS (one a line).
-- With $BENCH_LIMIT > 0, stop after that many responses (the first pass over the keys).
local keys = {}
for line in io.lines(os.getenv("BENCH_KEYS")) do
  if #line > 0 then keys[#keys + 1] = "Bearer " .. line end
end
local i = 0
request = function()
  i = i % #keys + 1
  return wrk.format(nil, nil, { ["Authorization"] = keys[i] })
end
local limit = tonumber(os.getenv("BENCH_LIMIT") or "0") or 0
if limit > 0 then
  local seen = 0
  response = function(status, headers, body)
    seen = seen + 1
    if seen >= limit then wrk.thread:stop() end
  end
end
