-- Take back a request no replica has taken yet (its caller gave up waiting).
-- KEYS[1]  deployment queue
-- KEYS[2]  the deployment's multiplexing members (see mux.lua; absent for most deployments)
-- ARGV[1]  namespace
-- ARGV[2]  the raw message as queued
-- Returns 1 if it was still queued (it will never run), else 0.
--@mux
return mux_unqueue(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
