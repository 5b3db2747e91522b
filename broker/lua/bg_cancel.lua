-- Cancel a background request, from any process, knowing only its id: withdraw it if it
-- is still queued (it never runs: CANCELLED now, its readers get the cancellation), else
-- flag it and tell its replica, as cancel.lua does (the replica never starts it, or
-- cancels it if it runs; its outcome then ends the record). The queue's name is built
-- from the record's app and deployment, as mux.lua builds the names it routes to.
-- KEYS[1]  the request's status record
-- KEYS[2]  result key, KEYS[3] watchers set
-- KEYS[4]  the request's cancel flag
-- ARGV[1]  namespace, ARGV[2] the request id
-- ARGV[3]  the encoded outcome of a cancelled request
-- ARGV[4]  the cancellations channel
-- ARGV[5]  TTL in ms of the cancel flag and of the readers' inboxes (the result TTL)
-- Returns 1 if withdrawn, 0 if flagged (taken or running), 2 if it had ended, -1 if no
-- such request is known (the flag is set anyway: a cancel that overtook its request
-- makes enqueue.lua refuse it).
--@bg
--@mux
local fields = redis.call('HMGET', KEYS[1], 'status', 'message', 'app', 'deployment', 'ttl')
local status, message = fields[1], fields[2]
if not status then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
  return -1
end
if BG_FINAL[status] then
  return 2
end
local ns = ARGV[1]
if message then
  local queue = ns .. ':q:' .. fields[3] .. ':' .. fields[4]
  local members = ns .. ':mux:' .. fields[3] .. ':' .. fields[4]
  if mux_unqueue(queue, members, ns, message) == 1 then
    local ttl = fields[5] or '86400000'
    redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
    bg_notify(KEYS[3], ARGV[2] .. ARGV[3], ARGV[5])
    redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'ended', bg_now(),
               'error_type', 'actors.exceptions.RequestCancelledError', 'error', 'cancelled while queued')
    redis.call('HDEL', KEYS[1], 'message')
    redis.call('PEXPIRE', KEYS[1], ttl)
    return 1
  end
end
redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 0
