-- Shared by the scripts of background requests (bg_*.lua), put in place of their
-- '--@bg' line by scripts.py.

-- Redis's time in ms, as a string (a Lua number would be written as 1.7e+12).
local function bg_now()
  local t = redis.call('TIME')
  return t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end

-- Push `item` (request id .. outcome) to every inbox waiting in `watchers`, as complete.lua
-- does; each inbox then expires after `inbox_ttl` ms if nobody reads it.
local function bg_notify(watchers, item, inbox_ttl)
  local inboxes = redis.call('SMEMBERS', watchers)
  for _, inbox in ipairs(inboxes) do
    redis.call('LPUSH', inbox, item)
    redis.call('PEXPIRE', inbox, inbox_ttl)
  end
  if #inboxes > 0 then
    redis.call('DEL', watchers)
  end
end

local BG_FINAL = {SUCCEEDED = true, FAILED = true, CANCELLED = true}
