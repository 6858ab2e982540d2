-- A wrk script for bench/fairness.sh: it counts the responses of each
-- worker, by the pid that examples/hello (and bench/node_cluster_rr.js)
-- writes in every body ("hello from pid 1234, ..."), and at the end prints
-- one line per pid and the max/min line:
--
--   pid 1234 requests 51234
--   workers 2 seen 2 requests 102000 max 51234 min 50766 max/min 1.01
--
-- A worker that answered nothing is not seen: FAIR_WORKERS (the number of
-- workers started) makes min 0 then, and max/min "inf".
--   FAIR_WORKERS=2 wrk -s bench/fairness.lua http://127.0.0.1:19411/

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
  unknown = 0
end

function response(status, headers, body)
  local pid = body and string.match(body, "pid (%d+)")
  if pid then
    counts[pid] = (counts[pid] or 0) + 1
  else
    unknown = unknown + 1
  end
end

function done(summary, latency, requests)
  local total, seen, other = {}, 0, 0
  for _, t in ipairs(threads) do
    for pid, n in pairs(t:get("counts")) do
      total[pid] = (total[pid] or 0) + n
    end
    other = other + t:get("unknown")
  end
  local pids = {}
  for pid in pairs(total) do
    table.insert(pids, pid)
  end
  table.sort(pids, function(a, b) return tonumber(a) < tonumber(b) end)
  local max, min, sum = 0, nil, 0
  for _, pid in ipairs(pids) do
    local n = total[pid]
    io.write(string.format("pid %s requests %d\n", pid, n))
    seen, sum = seen + 1, sum + n
    if n > max then max = n end
    if min == nil or n < min then min = n end
  end
  local workers = tonumber(os.getenv("FAIR_WORKERS") or "") or seen
  if seen < workers or min == nil then min = 0 end
  local ratio = "inf"
  if min > 0 then ratio = string.format("%.2f", max / min) end
  io.write(string.format("workers %d seen %d requests %d max %d min %d max/min %s unparsed %d\n",
    workers, seen, sum, max, min, ratio, other))
end
