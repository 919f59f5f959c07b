-- Settle a cluster claim's hold on the player's event cap by the claim's outcome: a win becomes w:<claim_id>, any
-- other outcome gives the place back. KEYS: 1 the player's wins (reserve.lua).
-- ARGV: 1 claim_id, 2 the win "<task>\t<prize>" or '' (it did not win), 3 '' or the hold as it must still be (a stale
-- hold resolved by another process: a hold that moved on since is left alone).
-- Returns the player's wins after it.
local hold = 'h:' .. ARGV[1]
if ARGV[3] == '' or redis.call('HGET', KEYS[1], hold) == ARGV[3] then
  if ARGV[2] ~= '' then
    redis.call('HSET', KEYS[1], 'w:' .. ARGV[1], ARGV[2])
  end
  redis.call('HDEL', KEYS[1], hold)
end
local wins = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 'w:' then
    wins = wins + 1
  end
end
return wins
