-- Say that a node or gateway is alive, stamped with Redis's clock: the machines' own
-- clocks may disagree, and another machine judges the stamp (Registry.nodes).
-- KEYS[1]  hash of records (nodes or gateways), id -> JSON
-- ARGV[1]  id
-- ARGV[2]  the record, a JSON object; its field heartbeat is set to Redis's time in seconds
local now = redis.call('TIME')
local record = cjson.decode(ARGV[2])
record['heartbeat'] = tonumber(now[1]) + tonumber(now[2]) / 1000000
return redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
