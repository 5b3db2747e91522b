-- Give up the controller lease, if the candidate still holds it. One script, so that a
-- lease that expired and was taken by another process in between is never deleted.
-- KEYS[1]  lease key
-- ARGV[1]  candidate id
-- Returns 1 if the lease was the candidate's and is released, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
