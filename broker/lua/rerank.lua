-- Rewrite the assignment records of replicas whose rank or world size changed, only
-- where the record still exists: a node may have unassigned the replica (it died) since
-- the controller read it, and writing it again would make the node start it anew.
-- KEYS[i]      the assignment hash of the i-th replica's node ({ns}:node:{id}:assign)
-- ARGV[1]      the events channel; ARGV[2] the event to publish if anything changed
-- ARGV[2+2i-1] the i-th replica's id; ARGV[2+2i] its new record (JSON)
-- Returns the number of records rewritten.
local changed = 0
for i, key in ipairs(KEYS) do
  local replica = ARGV[1 + 2 * i]
  if redis.call('HEXISTS', key, replica) == 1 then
    redis.call('HSET', key, replica, ARGV[2 + 2 * i])
    changed = changed + 1
  end
end
if changed > 0 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return changed
