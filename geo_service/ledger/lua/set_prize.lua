-- A live change of one prize's quota and/or rate, numbered `seq`, logged in the bucket's change stream.
-- The quota never goes below what is issued.
--
-- KEYS: 1 task hash, 2 the bucket's change stream, 3 the bucket's changed-tasks zset
-- ARGV: 1 task_id, 2 prize_type, 3 new quota or '', 4 new rate (thousandths per s, -1: none) or '', 5 seq
-- Returns {'ok', quota, rate, at} or {'no_such_prize'} or {'quota_below_issued', issued}.
local p = ARGV[2]
local f = redis.call('HMGET', KEYS[1], 'q:' .. p, 'i:' .. p, 'r:' .. p)
if not f[1] then
  return {'no_such_prize'}
end
local quota = ARGV[3] ~= '' and tonumber(ARGV[3]) or tonumber(f[1])
local rate = ARGV[4] ~= '' and tonumber(ARGV[4]) or tonumber(f[3] or '-1')
if quota < tonumber(f[2] or '0') then
  return {'quota_below_issued', f[2]}
end
local clock = redis.call('TIME')
local at = string.format('%d.%06d', tonumber(clock[1]), tonumber(clock[2]))
local ms = string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
redis.call('HSET', KEYS[1], 'q:' .. p, string.format('%d', quota), 'r:' .. p, string.format('%d', rate))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', '10000', '*', 'seq', ARGV[5], 'at', at, 'task_id', ARGV[1], 'prize_type', p,
  'quota', string.format('%d', quota), 'rate_milli', string.format('%d', rate))
redis.call('ZADD', KEYS[3], ms, ARGV[1])
return {'ok', string.format('%d', quota), string.format('%d', rate), at}
