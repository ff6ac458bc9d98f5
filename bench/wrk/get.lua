-- GET of each user's own profile with that user's token, rotating through the first
-- `count` users of the file, one user per request (each thread starts at its own offset).
--   args: users=<file> [count=N] [threads=2] [prefix=/api/profiles/]
-- prefix=/bare/ or /redis/ points the same requests at bench/limits.rs.
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
setup, done = common.setup, common.done

local ids, tokens, n, i, prefix

function init(args)
  local o = common.args(args)
  ids, tokens = common.load_users(o.users, tonumber(o.count))
  n = #ids
  i = (tid or 0) * math.floor(n / (tonumber(o.threads) or 2))
  prefix = o.prefix or "/api/profiles/"
end

function request()
  i = i % n + 1
  return wrk.format("GET", prefix .. ids[i], { ["Authorization"] = "Bearer " .. tokens[i] })
end
