-- Queue a background request: enqueue.lua, unchanged, and if it queued the request, its
-- status record (QUEUED) in the same step, so no replica can take the request before its
-- record exists. Ordinary requests never run this script.
-- KEYS[1..5] as enqueue.lua; KEYS[6] the request's status record
-- ARGV as enqueue.lua, then five more, taken off before enqueue.lua runs: the app, the
-- deployment, the method (for HTTP, e.g. 'GET /path'), the record's TTL in ms, and '1'
-- for an HTTP request ('0' otherwise).
-- Returns what enqueue.lua returns.
--@bg
local http = table.remove(ARGV)
local ttl = table.remove(ARGV)
local method = table.remove(ARGV)
local dep = table.remove(ARGV)
local app = table.remove(ARGV)
local function enqueue()
--@enqueue
end
local queued = enqueue()
if type(queued) == 'number' and queued >= 0 then
  redis.call('HSET', KEYS[6], 'status', 'QUEUED', 'app', app, 'deployment', dep, 'method', method,
             'created', bg_now(), 'attempts', '0', 'http', http, 'ttl', ttl, 'message', ARGV[1])
  redis.call('PEXPIRE', KEYS[6], ttl)
end
return queued
