-- Settle one claim: the whole of it, atomically, in one call. Every key shares the task's bucket hash
-- tag, so the call is legal on a cluster. Everything is read and decided before the first write: a
-- script that fails midway keeps the writes it made.
--
-- KEYS: 1 task hash (q:/i:/r:/s:/n:<prize>: quota, issued, rate in thousandths per s (-1: none),
--       slice, issued in that slice; off: the kill switch; won_at: the last win's time), 2 wins hash (user -> wins),
--       3 the claim's outcome, 4 the bucket's flow stream, 5 the bucket's changed-tasks zset, 6 the bucket's epoch,
--       7 (one node only) the player's position hash, for the movement check made right here,
--       8, 9 (one node only) the claim id's binding and its bucket's filter, checked and set right here,
--       10 (one node only) the player's wins in the event (w:<claim_id> "<task>\t<prize>" per win)
-- args (ARGV by name, redis_layout.py CLAIM_ARGS): claim_id, user_id, task_id, poi_id, win_cap, plausible (the movement
--       check: "1", "0", or "?" to check it here, KEYS[7]), bound (bind.lua's answer, 'new', 'bound' or 'ask', or "?"
--       to check and bind here, KEYS[8], KEYS[9]), checked and filter_bits (claim_ids.lua), flow_max (the most records the flow stream may
--       hold: at it, claims wait for the shipper), player_cap (the event's cap per player, 0: none), player (the
--       event cap: 'none', 'here' (count the win in KEYS[10], and check it with a cap), or reserve.lua's answer on a
--       cluster: 'capped', 'counted', or
--       the hold's deadline in ms), lat, lng, at_s, max_speed_mps, position_ttl_s;
--       then ARGV[FIRST_PRIZE..] the prize types in draw order
-- Returns "<outcome>\t<prize_type>\t<user>\t<task>\t<poi>" (prize_type empty unless won; the claim it belongs
-- to after it), followed by "\n<wins left>" when settled here with player 'here' and a cap (and on player_cap_reached by
-- the player's wins, "\n<claim_id>\t<task>\t<prize>" each); the first outcome for a retried
-- claim; or, with nothing written: 'claim_id_taken' (the id is another claim's), 'ask_record' (claim_ids.lua),
-- 'state_lost' (the bucket has no epoch), 'flow_full' or 'hold_expired' (the player's hold ran out first).
local mine = args.user_id .. '\t' .. args.task_id .. '\t' .. args.poi_id
local state, here = args.bound, args.bound == '?'  -- bind.lua's answer, or '?': check and bind it here
if here then
  state = binding(KEYS[8], KEYS[9], args.claim_id, mine, args.checked, tonumber(args.filter_bits))
  if state == 'taken' then
    return 'claim_id_taken'
  end
end
local prior = redis.call('GET', KEYS[3])
if prior then
  -- "<outcome>\t<prize>\t<user>\t<task>\t<poi>": a claim of another player is refused even where its binding is gone.
  if string.match(prior, '^[^\t]*\t[^\t]*\t(.*)$') ~= mine then
    return 'claim_id_taken'
  end
  return prior
end
-- An id with no outcome here that the filter may have seen, or that is bound (on a cluster, on another node) with
-- no outcome beside it, is the record database's to answer first: a bucket restored after its node lost its
-- state has no outcomes, and the claim may be one of them. 'checked': the record holds no such claim.
if (state == 'ask' or state == 'bound') and args.checked ~= '1' then
  return 'ask_record'
end
-- A bucket without the ledger's epoch lost its state: it settles nothing (a retry whose outcome it still holds
-- was answered above).
if redis.call('EXISTS', KEYS[6]) == 0 then
  return 'state_lost'
end
if redis.call('XLEN', KEYS[4]) >= tonumber(args.flow_max) then
  return 'flow_full'
end

local clock = redis.call('TIME')
local sec, usec = tonumber(clock[1]), tonumber(clock[2])
local now_slice = sec * 10 + math.floor(usec / 100000)
local held = tonumber(args.player)  -- a cluster's hold on the player's cap: settled only before its deadline
if held and sec * 1000 + math.floor(usec / 1000) >= held then
  return 'hold_expired'
end
local player_wins, capped = 0, tonumber(args.player_cap) > 0
if args.player == 'here' then
  player_wins = redis.call('HLEN', KEYS[10])
end

-- Slice n may issue floor((m+1)R/10^4) - floor(mR/10^4), m = n mod 10^4 (geo_service/ledger/rates.py).
local function allowance(rate, n)
  if rate < 0 then
    return math.huge
  end
  local m = n % 10000
  return math.floor((m + 1) * rate / 10000) - math.floor(m * rate / 10000)
end

local moved = args.plausible
if moved == '?' then
  moved = tostring(plausible(KEYS[7], args.lat, args.lng, args.at_s, args.max_speed_mps, args.position_ttl_s))
end
local outcome, prize, slice, used = 'no_prize_left', '', 0, 0
if moved ~= '1' then
  outcome = 'implausible_movement'
elseif args.player == 'capped' or (args.player == 'here' and capped and player_wins >= tonumber(args.player_cap)) then
  outcome = 'player_cap_reached'
elseif tonumber(redis.call('HGET', KEYS[2], args.user_id) or '0') >= tonumber(args.win_cap) then
  outcome = 'cap_reached'
elseif redis.call('HGET', KEYS[1], 'off') then
  outcome = 'task_inactive'  -- the kill switch (set_flag.lua), held here whether or not the collector is up
else
  for i = FIRST_PRIZE, #ARGV do
    local p = ARGV[i]
    local f = redis.call('HMGET', KEYS[1], 'q:' .. p, 'i:' .. p, 'r:' .. p, 's:' .. p, 'n:' .. p)
    if f[1] and tonumber(f[2] or '0') < tonumber(f[1]) then
      local s, u = tonumber(f[4] or '0'), tonumber(f[5] or '0')
      -- A slice behind the prize's (a clock that stepped back) counts against the prize's slice.
      if now_slice > s then
        s, u = now_slice, 0
      end
      if u < allowance(tonumber(f[3] or '-1'), s) then
        outcome, prize, slice, used = 'won', p, s, u + 1
        break
      end
    end
  end
end

-- The flow record, its fields in FLOW_FIELDS order (records.py), made before the first write: a field without
-- a value stops the script here, with nothing written.
local record = {claim_id = args.claim_id, user_id = args.user_id, task_id = args.task_id, poi_id = args.poi_id,
  prize_type = prize, outcome = outcome, at = string.format('%d.%06d', sec, usec)}
local entry = {}
for _, name in ipairs(FLOW_FIELDS) do
  if record[name] == nil then
    error('the flow record has no ' .. name)
  end
  entry[#entry + 1] = name
  entry[#entry + 1] = record[name]
end

if outcome == 'won' then
  redis.call('HINCRBY', KEYS[1], 'i:' .. prize, 1)
  redis.call('HSET', KEYS[1], 's:' .. prize, string.format('%d', slice), 'n:' .. prize, used, 'won_at', record.at)
  redis.call('HINCRBY', KEYS[2], args.user_id, 1)
  redis.call('ZADD', KEYS[5], string.format('%d', sec * 1000 + math.floor(usec / 1000)), args.task_id)
  if args.player == 'here' then
    redis.call('HSET', KEYS[10], 'w:' .. args.claim_id, args.task_id .. '\t' .. prize)
    player_wins = player_wins + 1
  end
end
local result = outcome .. '\t' .. prize .. '\t' .. mine
redis.call('SET', KEYS[3], result)  -- no expiry until its record is in the record database (ship.py)
if here and state == 'new' then
  bind(KEYS[8], mine)
end
redis.call('XADD', KEYS[4], '*', unpack(entry))
if args.player == 'here' and capped then
  result = result .. '\n' .. math.max(tonumber(args.player_cap) - player_wins, 0)
  if outcome == 'player_cap_reached' then  -- and the player's wins: "\n<claim_id>\t<task>\t<prize>" each
    local fields = redis.call('HGETALL', KEYS[10])
    for i = 1, #fields, 2 do
      result = result .. '\n' .. string.sub(fields[i], 3) .. '\t' .. fields[i + 1]
    end
  end
end
return result
