-- Settle a cluster claim's hold on the player's event cap by the claim's outcome: a win becomes w:<claim_id>, any
-- other outcome gives the place back. KEYS: 1 the player's wins (reserve.lua).
-- ARGV: 1 claim_id, 2 'won' or not, 3 '' or the hold as it must still be (a stale hold resolved by another process: a
-- hold that moved on since is left alone).
-- Returns the player's wins and holds after it.
local hold = 'h:' .. ARGV[1]
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], hold) ~= ARGV[3] then
  return redis.call('HLEN', KEYS[1])
end
if ARGV[2] == 'won' then
  redis.call('HSET', KEYS[1], 'w:' .. ARGV[1], '1')
end
redis.call('HDEL', KEYS[1], hold)
return redis.call('HLEN', KEYS[1])
