-- A cluster's claim holds a place under the player's event cap before its task's node settles it (the player's
-- wins live on another node than the task's keys). KEYS: 1 the player's wins (w:<claim_id> per win, h:<claim_id>
-- "<deadline ms>\t<task>\t<poi>" per hold), 2 that bucket's epoch.
-- args (ARGV by name, redis_layout.py RESERVE_ARGS): claim_id, task_id, poi_id, player_cap, lease_ms, stale_ms
-- Returns {'held', <deadline ms>, 'new' | 'moved'} (the claim may settle before then; 'moved': it held the place
-- already, from an earlier call of the same claim), {'counted'} (it won already: its task's node
-- answers its first outcome), {'capped', id, win, id, win, ...} (every place is a win, "<task>\t<prize>" each),
-- {'busy'} (no place left, some held by claims still settling: ask again shortly, nothing is decided),
-- {'stale', id, hold, id, hold, ...} (no place left but holds past their deadline by stale_ms: the caller resolves
-- them by their claims' outcomes (confirm.lua) and asks again), {'claim_id_taken'} (the id holds a place for another
-- task or POI) or {'state_lost'} (the bucket has no epoch).
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'state_lost'}
end
if redis.call('HEXISTS', KEYS[1], 'w:' .. args.claim_id) == 1 then
  return {'counted'}
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local claim = args.task_id .. '\t' .. args.poi_id
local held = redis.call('HGET', KEYS[1], 'h:' .. args.claim_id)
if held and string.match(held, '^%d+\t(.*)$') ~= claim then
  return {'claim_id_taken'}
end
local mine = held ~= false
if not mine and redis.call('HLEN', KEYS[1]) >= tonumber(args.player_cap) then
  local stale, fields = {'stale'}, redis.call('HGETALL', KEYS[1])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'h:' and tonumber(string.match(fields[i + 1], '^(%d+)\t')) + tonumber(args.stale_ms) < now then
      stale[#stale + 1] = string.sub(fields[i], 3)
      stale[#stale + 1] = fields[i + 1]
    end
  end
  if #stale > 1 then
    return stale
  end
  local capped = {'capped'}
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 2) == 'h:' then
      return {'busy'}  -- a claim holding a place may yet not win: refusing now could refuse a player below the cap
    end
    capped[#capped + 1] = string.sub(fields[i], 3)
    capped[#capped + 1] = fields[i + 1]
  end
  return capped
end
-- A retry's hold moves on to a new deadline: its earlier call, if it still arrives, finds its own deadline past.
local deadline = string.format('%d', now + tonumber(args.lease_ms))
redis.call('HSET', KEYS[1], 'h:' .. args.claim_id, deadline .. '\t' .. claim)
return {'held', deadline, mine and 'moved' or 'new'}
