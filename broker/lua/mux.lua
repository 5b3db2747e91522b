-- Routing of multiplexed deployments (those with a @serve.multiplexed loader), prepended
-- to the scripts that route (see scripts.py). Each replica of such a deployment has a
-- queue of its own, {ns}:rq:{id}, which it takes from before the deployment's queue and
-- blocks on; the deployment's members HASH (id -> capacity) lists the replicas to route
-- to, and {ns}:models:{id} the models each holds. A replica's load is its processing list
-- plus its own queue; it has a free slot while that is below its capacity. A request goes
-- to the deployment's queue only when no member has a free slot, and a member with a free
-- slot looks there before it blocks: so nothing waits there while a replica idles.

-- The member a request for `model` ('' for none) goes to, or false if all are full: the
-- least loaded of those holding the model; else the one holding the fewest models, then
-- the least loaded.
local function mux_pick(members_key, ns, model)
  local members = redis.call('HGETALL', members_key)
  local best, best_rank, best_load = false, 0, 0
  for i = 1, #members, 2 do
    local id = members[i]
    local load = redis.call('LLEN', ns .. ':proc:' .. id) + redis.call('LLEN', ns .. ':rq:' .. id)
    if load < tonumber(members[i + 1]) then
      local rank = 1
      if model ~= '' then
        local held = ns .. ':models:' .. id
        if redis.call('SISMEMBER', held, model) == 1 then
          rank = 0
        else
          rank = 1 + redis.call('SCARD', held)
        end
      end
      if not best or rank < best_rank or (rank == best_rank and load < best_load) then
        best, best_rank, best_load = id, rank, load
      end
    end
  end
  return best
end

-- Queue `message`: on the own queue of the member mux_pick chooses (which then holds the
-- model: later requests for it follow), else on the deployment's queue `queue`. At the
-- back (LPUSH), or with `front` where replicas take next (RPUSH). Returns the list's length.
local function mux_push(queue, members_key, ns, model, message, front)
  local id = mux_pick(members_key, ns, model)
  local target = queue
  if id then
    target = ns .. ':rq:' .. id
    if model ~= '' then
      redis.call('SADD', ns .. ':models:' .. id, model)
    end
  end
  if front then
    return redis.call('RPUSH', target, message)
  end
  return redis.call('LPUSH', target, message)
end

-- Remove a queued message, by value, from the deployment's queue or a member's own queue.
-- Returns 1 if it was found (no replica had taken it), else 0.
local function mux_unqueue(queue, members_key, ns, message)
  if redis.call('LREM', queue, 1, message) == 1 then
    return 1
  end
  for _, id in ipairs(redis.call('HKEYS', members_key)) do
    if redis.call('LREM', ns .. ':rq:' .. id, 1, message) == 1 then
      return 1
    end
  end
  return 0
end
