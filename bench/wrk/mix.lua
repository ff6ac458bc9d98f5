-- 90/10 mix over the first `count` users, each request by the user it concerns: a GET of
-- the own profile, or with probability 1/10 a PUT of the own profile changing `first_name`
-- (a database write and a cache invalidation; that user's next GET is a miss). The choice is
-- random (seeded per thread), so written users are read again too.
--   args: users=<file> [count=N] [threads=2]
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
setup, done = common.setup, common.done

local ids, tokens, n, i, k = nil, nil, 0, 0, 0

function init(args)
  local o = common.args(args)
  ids, tokens = common.load_users(o.users, tonumber(o.count))
  n = #ids
  i = (tid or 0) * math.floor(n / (tonumber(o.threads) or 2))
  math.randomseed(1000 + (tid or 0))
end

function request()
  i = i % n + 1
  k = k + 1
  local path = "/api/profiles/" .. ids[i]
  local auth = "Bearer " .. tokens[i]
  if math.random(10) == 1 then
    local body = string.format('{"first_name":"Bench%d-%d"}', tid or 0, k)
    return wrk.format("PUT", path,
      { ["Authorization"] = auth, ["Content-Type"] = "application/json" }, body)
  end
  return wrk.format("GET", path, { ["Authorization"] = auth })
end
