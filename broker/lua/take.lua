-- Take up to N waiting messages at once (non-blocking), moving them to a processing list.
-- KEYS[1]  deployment queue
-- KEYS[2]  the replica's processing list
-- ARGV[1]  most messages to take
-- Returns the messages taken, oldest first (possibly none).
local taken = {}
for i = 1, tonumber(ARGV[1]) do
  local message = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not message then
    break
  end
  taken[i] = message
end
return taken
