-- The kill switch of one task, atomic with its claims (the claim script reads `off` from the same hash).
-- KEYS: 1 the task hash. ARGV: 1 "1" to switch the task off, "0" to switch it back on.
-- Returns the time of the task's last win (epoch s, as text), or false: none yet. Switched off, it is the
-- last win the task will have.
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'off', '1')
else
  redis.call('HDEL', KEYS[1], 'off')
end
return redis.call('HGET', KEYS[1], 'won_at')
