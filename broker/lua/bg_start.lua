-- A replica starts a background request: its record says RUNNING, with the start time
-- and the attempt, and drops the queued message (it can no longer be withdrawn). A
-- request that ended already (cancelled meanwhile) keeps its status.
-- KEYS[1]  the request's status record
-- ARGV[1]  the attempt (1 for the first run), ARGV[2] the record's TTL in ms
-- ARGV[3..5] app, deployment, method: written if the record expired while it waited
-- Returns 1 if the record says RUNNING now, else 0.
--@bg
local status = redis.call('HGET', KEYS[1], 'status')
if status and BG_FINAL[status] then
  return 0
end
if not status then
  redis.call('HSET', KEYS[1], 'app', ARGV[3], 'deployment', ARGV[4], 'method', ARGV[5], 'ttl', ARGV[2])
end
redis.call('HSET', KEYS[1], 'status', 'RUNNING', 'started', bg_now(), 'attempts', ARGV[1])
redis.call('HDEL', KEYS[1], 'message')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
