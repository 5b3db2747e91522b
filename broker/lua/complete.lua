-- Publish a request's outcome and acknowledge the message, in one round trip.
-- KEYS[1]  result key (STRING, the future's value)
-- KEYS[2]  watchers set (inboxes of chained calls waiting for this result)
-- KEYS[3]  the replica's processing list
-- KEYS[4]  the caller's inbox, or '' when nobody asked for a reply
-- KEYS[5]  the request's "detached" flag: if set, the caller gets only the request id
-- KEYS[6]  the response's read count (see settle.lua): once every promised read is done
--          (the watchers were just told), the result is deleted
-- KEYS[7]  the request's cancel flag, deleted: if it was set and no other call reads the
--          result, the result is not kept (its caller gave up on it)
-- ARGV[1]  request id (32 hex chars, prefixed to every inbox item)
-- ARGV[2]  encoded outcome
-- ARGV[3]  result TTL in ms
-- ARGV[4]  the raw message to remove from the processing list
-- ARGV[5]  '1' to publish the outcome; '0' only to acknowledge (a streamed response,
--          whose outcome went to its stream)
local cancelled = redis.call('DEL', KEYS[7]) == 1
if ARGV[5] == '1' then
  local item = ARGV[1] .. ARGV[2]
  local detached = redis.call('EXISTS', KEYS[5]) == 1
  if not (cancelled and not detached and redis.call('EXISTS', KEYS[2], KEYS[6]) == 0) then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  end
  if KEYS[4] ~= '' then
    if detached then
      redis.call('DEL', KEYS[5])
      redis.call('LPUSH', KEYS[4], ARGV[1])
    else
      redis.call('LPUSH', KEYS[4], item)
    end
    redis.call('PEXPIRE', KEYS[4], ARGV[3])
  end
  local watchers = redis.call('SMEMBERS', KEYS[2])
  for _, inbox in ipairs(watchers) do
    redis.call('LPUSH', inbox, item)
    redis.call('PEXPIRE', inbox, ARGV[3])
  end
  if #watchers > 0 then
    redis.call('DEL', KEYS[2])
  end
  local count = redis.call('HMGET', KEYS[6], 'read', 'promised')
  if count[2] and tonumber(count[1] or '0') >= tonumber(count[2]) then
    redis.call('DEL', KEYS[1], KEYS[6])
  end
end
redis.call('LREM', KEYS[3], 1, ARGV[4])
return 1
