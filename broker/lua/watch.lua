-- Read a result now, or register an inbox to be told when it is written. Every call is
-- one read of a response passed by reference (see settle.lua).
-- KEYS[1]  result key
-- KEYS[2]  watchers set
-- KEYS[3]  the response's read count (HASH: read, promised)
-- ARGV[1]  inbox to notify
-- ARGV[2]  TTL of the registration in ms
-- Returns the encoded outcome if it is already there, else nil.
local value = redis.call('GET', KEYS[1])
local read = redis.call('HINCRBY', KEYS[3], 'read', 1)
if value then
  local promised = redis.call('HGET', KEYS[3], 'promised')
  if promised and read >= tonumber(promised) then
    redis.call('DEL', KEYS[1], KEYS[3])  -- the last reader
  else
    redis.call('PEXPIRE', KEYS[3], ARGV[2])
  end
  return value
end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return false
