-- Withdraw a request that no replica has taken yet; otherwise flag it as cancelled.
-- KEYS[1]  deployment queue
-- KEYS[2]  cancel flag key (the replica checks it before starting the request, and its
--          complete.lua then writes no result nobody will read)
-- KEYS[3]  result key
-- KEYS[4]  the deployment's multiplexing members (see mux.lua): a request routed to a
--          replica's own queue is withdrawn from there
-- ARGV[1]  the raw message as queued
-- ARGV[2]  TTL of the flag in ms
-- ARGV[3]  the cancellations channel, ARGV[4] the request id: a replica running the
--          request cancels it when it hears of it
-- ARGV[5]  '1' if other calls read the result (the response was passed on), else '0'
-- ARGV[6]  namespace
-- Returns 1 if the message was removed before any replica took it, 2 if the request
-- had already completed, 0 if it is running (or taken).
--@mux
if mux_unqueue(KEYS[1], KEYS[4], ARGV[6], ARGV[1]) == 1 then
  return 1
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  if ARGV[5] == '0' then
    redis.call('DEL', KEYS[3])
  end
  return 2
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 0
