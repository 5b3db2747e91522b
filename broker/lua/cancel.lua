-- Withdraw a request that no replica has taken yet; otherwise flag it as cancelled.
-- KEYS[1]  deployment queue
-- KEYS[2]  cancel flag key
-- ARGV[1]  the raw message as queued
-- ARGV[2]  TTL of the flag in ms
-- ARGV[3]  the cancellations channel, ARGV[4] the request id: a replica running the
--          request cancels it when it hears of it
-- Returns 1 if the message was removed before any replica took it, 0 otherwise.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  return 1
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 0
