-- Shared by the scripts in bench/wrk/ (loaded with dofile, see their first lines).
--
-- Arguments come after wrk's `--` as key=value pairs, e.g.
--   wrk -t2 -c32 -d10s -s bench/wrk/get.lua http://127.0.0.1:8001 -- users=/tmp/users count=1000 threads=2
-- The users file holds one `<user_id> <token>` line per user (bench/mint.rs writes it).
--
-- done() prints one line `BENCH_RESULT {json}` that bench/bench.py reads: requests,
-- duration, non-2xx (wrk counts statuses >= 400; the one-shot script counts every non-2xx
-- itself), socket errors, and latency percentiles in microseconds.
local M = {}

local threads = {}

function M.args(args)
  local o = {}
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if not k then error("argument is not key=value: " .. a) end
    o[k] = v
  end
  return o
end

-- The first `limit` users of the file (all of them when limit is nil).
function M.load_users(path, limit)
  local ids, tokens = {}, {}
  for line in io.lines(path) do
    local id, token = line:match("^(%S+)%s+(%S+)")
    if id then
      ids[#ids + 1] = id
      tokens[#tokens + 1] = token
      if limit and #ids >= limit then break end
    end
  end
  if #ids == 0 then error("no users in " .. path) end
  return ids, tokens
end

-- Runs in the main Lua state once per thread, before that thread's init(): numbers the
-- threads (global `tid`, 0-based) and keeps them so done() can read their counters.
function M.setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

function M.done(summary, latency, requests)
  local non2xx = summary.errors.status
  local counted, any = 0, false
  for _, t in ipairs(threads) do
    local n = t:get("non2xx")
    if n then counted, any = counted + n, true end
  end
  if any then non2xx = counted end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, non2xx,
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
  io.flush()
end

return M
