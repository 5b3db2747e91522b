-- Take or keep the controller lease.
-- KEYS[1]  lease key
-- ARGV[1]  candidate id
-- ARGV[2]  lease length in ms
-- Returns 1 if the candidate holds the lease now, 0 if someone else does.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
