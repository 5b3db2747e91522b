-- Account for the readers of a response passed by reference, and delete its result once
-- all have read it. The caller promises how many reads it made possible (consumers it
-- created, plus its own reads) when it lets go of the response; readers count up (see
-- watch.lua, complete.lua). Counting up and promising in any order is safe: the result
-- goes only when both are known and match.
-- KEYS[1]  result key
-- KEYS[2]  the response's read count (HASH: read, promised)
-- ARGV[1]  reads promised, or '' to leave the promise as it is
-- ARGV[2]  reads to add (a consumer that will never read counts as read)
-- ARGV[3]  TTL of the count in ms
-- Returns 1 if the result was deleted.
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[2], 'promised', ARGV[1])
end
local read = redis.call('HINCRBY', KEYS[2], 'read', ARGV[2])
local promised = redis.call('HGET', KEYS[2], 'promised')
if promised and read >= tonumber(promised) and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 0
