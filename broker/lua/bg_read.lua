-- Read a background request's outcome, or register an inbox to be told when it is
-- written. Never deletes anything: the outcome stays for its TTL, however often read.
-- KEYS[1]  result key
-- KEYS[2]  watchers set
-- KEYS[3]  the request's status record
-- ARGV[1]  inbox to notify; ARGV[2] TTL in ms of the registration if the record has none
-- Returns the encoded outcome, false (the inbox is registered), -1 if no such request
-- exists (unknown id, or expired), -2 if it ended but its outcome has expired.
--@bg
local value = redis.call('GET', KEYS[1])
if value then
  return value
end
local status = redis.call('HGET', KEYS[3], 'status')
if not status then
  return -1
end
if BG_FINAL[status] then
  return -2
end
redis.call('SADD', KEYS[2], ARGV[1])
local ttl = redis.call('PTTL', KEYS[3])
redis.call('PEXPIRE', KEYS[2], ttl > 0 and ttl or ARGV[2])
return false
