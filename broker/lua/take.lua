-- Take up to N waiting messages at once (non-blocking), moving them to a processing list.
-- KEYS[1]  the replica's processing list
-- KEYS[2..] queues to take from, in order: the deployment's queue; for a replica of a
--          multiplexed deployment, its own queue first (see mux.lua)
-- ARGV[1]  most messages to take
-- Returns the messages taken, oldest first (possibly none).
local taken, most = {}, tonumber(ARGV[1])
for k = 2, #KEYS do
  while #taken < most do
    local message = redis.call('LMOVE', KEYS[k], KEYS[1], 'RIGHT', 'LEFT')
    if not message then
      break
    end
    taken[#taken + 1] = message
  end
end
return taken
