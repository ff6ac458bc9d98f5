-- Each of the first `count` users exactly once: GET of the own profile with the own token.
-- Thread t of T takes users t+1, t+1+T, ...; when a thread has all its answers it prints
-- BENCH_THREAD_DONE and stops (bench/bench.py then ends wrk with SIGINT, so the run lasts
-- as long as the work, not wrk's -d). Every non-2xx answer is counted (global `non2xx`).
-- No request is sent beyond the users: delay() reserves a user before each request and
-- parks a connection that finds none left.
--   args: users=<file> [count=N] [threads=2] [prefix=/api/profiles/]
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
setup, done = common.setup, common.done

local ids, tokens, mine, prefix
local reserved, sent, received = 0, 0, 0
non2xx = 0

function init(args)
  local o = common.args(args)
  ids, tokens = common.load_users(o.users, tonumber(o.count))
  local step = tonumber(o.threads) or 2
  mine = {}
  for k = (tid or 0) + 1, #ids, step do mine[#mine + 1] = k end
  prefix = o.prefix or "/api/profiles/"
end

function delay()
  if reserved >= #mine then return 3600000 end
  reserved = reserved + 1
  return 0
end

function request()
  local k = mine[1]
  -- wrk calls request() once before the run to check the script: that call has no
  -- reservation and must not use up a user.
  if sent < reserved then
    sent = sent + 1
    k = mine[sent]
  end
  return wrk.format("GET", prefix .. ids[k], { ["Authorization"] = "Bearer " .. tokens[k] })
end

function response(status, headers, body)
  received = received + 1
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
  if received == #mine then
    io.write("BENCH_THREAD_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end
