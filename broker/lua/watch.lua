-- Read a result now, or register an inbox to be told when it is written.
-- KEYS[1]  result key
-- KEYS[2]  watchers set
-- ARGV[1]  inbox to notify
-- ARGV[2]  TTL of the registration in ms
-- Returns the encoded outcome if it is already there, else nil.
local value = redis.call('GET', KEYS[1])
if value then
  return value
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return false
