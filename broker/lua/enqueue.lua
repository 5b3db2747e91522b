-- Put one request on a deployment's queue, unless the deployment is gone or its queue is full.
-- KEYS[1]  deployment hash (field max_queued: -1 for unlimited)
-- KEYS[2]  deployment queue (LIST; callers LPUSH, replicas take from the right)
-- ARGV[1]  encoded request message
-- ARGV[2]  TTL in ms of the flags below
-- ARGV[3..] "detached" flag keys of responses this call consumes: their values then
--           go to their result keys only, not back to their caller (see complete.lua)
-- Returns the queue length after the push, -1 if the deployment is not registered,
-- -2 if max_queued requests are already waiting (backpressure; nothing is queued).
local max_queued = redis.call('HGET', KEYS[1], 'max_queued')
if not max_queued then
  return -1
end
max_queued = tonumber(max_queued)
if max_queued >= 0 and redis.call('LLEN', KEYS[2]) >= max_queued then
  return -2
end
for i = 3, #ARGV do
  redis.call('SET', ARGV[i], '1', 'PX', ARGV[2])
end
return redis.call('LPUSH', KEYS[2], ARGV[1])
