-- Write the outcome of a background request and acknowledge its message: complete.lua's
-- job, except that the result is always kept, for the background TTL, whoever reads it
-- and however often (no read count, no cancel flag deletes it), and that its status
-- record ends (a FAILED one joins the failed index).
-- KEYS[1]  result key
-- KEYS[2]  watchers set (inboxes waiting for the result: readers and chained calls)
-- KEYS[3]  the replica's processing list
-- KEYS[4]  the request's "detached" flag and KEYS[5] its cancel flag: both deleted
-- KEYS[6]  the request's status record
-- KEYS[7]  the failed index (ZSET id -> when its record expires, ms)
-- ARGV[1]  request id, ARGV[2] encoded outcome, ARGV[3] background TTL in ms
-- ARGV[4]  the raw message to remove from the processing list ('' for none)
-- ARGV[5]  the final status (SUCCEEDED, FAILED or CANCELLED), ARGV[6] the error's type,
--          ARGV[7] its first line ('' for none)
-- ARGV[8]  TTL in ms of the watchers' inboxes (the result TTL)
-- ARGV[9]  namespace: a FAILED request is counted in its deployment's counts HASH
--          ({ns}:counts:{app}:{dep}, field failed; the name built from the record's app
--          and deployment), while the deployment exists (its app's deletion deletes it)
-- ARGV[10..] more field, value pairs for the record (a request refused before it was queued)
--@bg
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
bg_notify(KEYS[2], ARGV[1] .. ARGV[2], ARGV[8])
local now = bg_now()
redis.call('HSET', KEYS[6], 'status', ARGV[5], 'ended', now, 'error_type', ARGV[6], 'error', ARGV[7],
           'ttl', ARGV[3])
for i = 10, #ARGV, 2 do
  redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1])
end
redis.call('HDEL', KEYS[6], 'message')
redis.call('PEXPIRE', KEYS[6], ARGV[3])
if ARGV[5] == 'FAILED' then
  local where = redis.call('HMGET', KEYS[6], 'app', 'deployment')
  if where[1] and where[2] and redis.call('EXISTS', ARGV[9] .. ':dep:' .. where[1] .. ':' .. where[2]) == 1 then
    redis.call('HINCRBY', ARGV[9] .. ':counts:' .. where[1] .. ':' .. where[2], 'failed', 1)
  end
  redis.call('ZADD', KEYS[7], tonumber(now) + tonumber(ARGV[3]), ARGV[1])
  if redis.call('PTTL', KEYS[7]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[7], ARGV[3])
  end
end
if ARGV[4] ~= '' then
  redis.call('LREM', KEYS[3], 1, ARGV[4])
end
return 1
