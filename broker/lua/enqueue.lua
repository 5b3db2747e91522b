-- Put one request on a deployment's queue, unless the deployment is gone or its queue is full.
-- KEYS[1]  deployment hash (field max_queued: -1 for unlimited)
-- KEYS[2]  deployment queue (LIST; callers LPUSH, replicas take from the right)
-- KEYS[3]  controller wake-up list, pushed when the deployment is scaled to zero
--          (field idle = '1'), so the first request starts a replica at once
-- KEYS[4]  the request's cancel flag: a cancellation that overtook its request (sent on
--          another connection) must not let it run
-- KEYS[5]  the deployment's multiplexing members: if the deployment hash says mux = '1',
--          the request is routed to a replica's own queue (see mux.lua)
-- ARGV[1]  encoded request message
-- ARGV[2]  TTL in ms of the flags below
-- ARGV[3]  the request's multiplexed model id ('' for none)
-- ARGV[4]  namespace (mux.lua builds the keys of the members from it)
-- ARGV[5..] pairs of keys of each response this call consumes: its "detached" flag and
--           its result. If the result is not written yet, the flag makes its value go
--           to the result key only, not back to its caller (see complete.lua).
-- Returns the queue length after the push, -1 if the deployment is not registered,
-- {-2, queue length, max_queued, config} if max_queued requests are already waiting
-- (backpressure; nothing is queued; the deployment's config field says how HTTP answers
-- that), -3 if the deployment failed to start (its field state is 'failed'), -4 if the
-- request was cancelled before it was queued.
local fields = redis.call('HMGET', KEYS[1], 'max_queued', 'state', 'idle', 'mux')
local max_queued = fields[1]
if not max_queued then
  return -1
end
if fields[2] == 'failed' then
  return -3
end
if redis.call('DEL', KEYS[4]) == 1 then
  return -4
end
max_queued = tonumber(max_queued)
if max_queued >= 0 then
  local queued = redis.call('LLEN', KEYS[2])
  if queued >= max_queued then
    return {-2, queued, max_queued, redis.call('HGET', KEYS[1], 'config')}
  end
end
for i = 5, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[i + 1]) == 0 then
    redis.call('SET', ARGV[i], '1', 'PX', ARGV[2])
  end
end
if fields[3] == '1' then
  redis.call('LPUSH', KEYS[3], 1)
end
if fields[4] == '1' then  -- routed by model; then the length of its replica's queue
--@mux
  return mux_push(KEYS[2], KEYS[5], ARGV[4], ARGV[3], ARGV[1], false)
end
return redis.call('LPUSH', KEYS[2], ARGV[1])
