-- Put one request on a deployment's queue, unless the deployment is gone or its queue is full.
-- KEYS[1]  deployment hash (field max_queued: -1 for unlimited)
-- KEYS[2]  deployment queue (LIST; callers LPUSH, replicas take from the right)
-- KEYS[3]  controller wake-up list, pushed when the deployment is scaled to zero
--          (field idle = '1'), so the first request starts a replica at once
-- ARGV[1]  encoded request message
-- ARGV[2]  TTL in ms of the flags below
-- ARGV[3..] "detached" flag keys of responses this call consumes: their values then
--           go to their result keys only, not back to their caller (see complete.lua)
-- Returns the queue length after the push, -1 if the deployment is not registered,
-- -2 if max_queued requests are already waiting (backpressure; nothing is queued),
-- -3 if the deployment failed to start (its field state is 'failed').
local fields = redis.call('HMGET', KEYS[1], 'max_queued', 'state', 'idle')
local max_queued = fields[1]
if not max_queued then
  return -1
end
if fields[2] == 'failed' then
  return -3
end
max_queued = tonumber(max_queued)
if max_queued >= 0 and redis.call('LLEN', KEYS[2]) >= max_queued then
  return -2
end
for i = 3, #ARGV do
  redis.call('SET', ARGV[i], '1', 'PX', ARGV[2])
end
if fields[3] == '1' then
  redis.call('LPUSH', KEYS[3], 1)
end
return redis.call('LPUSH', KEYS[2], ARGV[1])
