-- POST /api/profiles/batch of `size` ids (default 50) with an admin token, windows sliding
-- over the first `count` users of the file.
--   args: users=<file> admin=<file whose first line ends with the admin token> [count=N] [size=50] [threads=2]
local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
setup, done = common.setup, common.done

local bodies, auth, i = {}, nil, 0

function init(args)
  local o = common.args(args)
  local ids = common.load_users(o.users, tonumber(o.count))
  local f = assert(io.open(o.admin, "r"))
  auth = "Bearer " .. f:read("*l"):match("(%S+)%s*$")  -- the file may hold `<id> <token>`
  f:close()
  local size = tonumber(o.size) or 50
  local n = #ids
  local start = 0
  repeat
    local chunk = {}
    for j = 0, size - 1 do chunk[#chunk + 1] = '"' .. ids[(start + j) % n + 1] .. '"' end
    bodies[#bodies + 1] = "[" .. table.concat(chunk, ",") .. "]"
    start = start + size
  until start >= n
  i = (tid or 0) * math.floor(#bodies / (tonumber(o.threads) or 2))
end

function request()
  i = i % #bodies + 1
  return wrk.format("POST", "/api/profiles/batch",
    { ["Authorization"] = auth, ["Content-Type"] = "application/json" }, bodies[i])
end
