-- Put requests back for other replicas, and take a leaving replica out of its
-- deployment's routing, in one step.
-- KEYS[1]  deployment queue
-- KEYS[2]  the deployment's multiplexing members (see mux.lua; absent for most deployments)
-- KEYS[3]  the replica's processing list
-- ARGV[1]  namespace
-- ARGV[2]  the replica's id
-- ARGV[3]  '1' if the replica leaves (it drains or died): it is no longer routed to, its
--          models are forgotten, and the requests routed to its own queue (never
--          started) are routed again
-- ARGV[4..] taken messages to put back, oldest first (removed from KEYS[3] first)
-- Everything put back is routed as a new request without a model would be, but where
-- replicas take next. Returns how many requests were put back.
--@mux
local ns, id = ARGV[1], ARGV[2]
local again = {}
for i = 4, #ARGV do
  redis.call('LREM', KEYS[3], 1, ARGV[i])
  again[#again + 1] = ARGV[i]
end
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[2], id)
  redis.call('DEL', ns .. ':models:' .. id)
  local own = ns .. ':rq:' .. id
  local waiting = redis.call('LRANGE', own, 0, -1)
  redis.call('DEL', own)
  for i = #waiting, 1, -1 do
    again[#again + 1] = waiting[i]
  end
end
for i = #again, 1, -1 do
  mux_push(KEYS[1], KEYS[2], ns, '', again[i], true)
end
return #again
