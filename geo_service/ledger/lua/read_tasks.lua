-- The counters of the task hashes named in KEYS (all of one bucket, so one slot), in order: one flat array
-- {prize, quota, issued, rate, prize, ...} a task. The collector's reads take a page of tasks in one call per
-- bucket instead of one command per task, and Redis picks the fields out faster than the reader would.
local out = {}
for i, key in ipairs(KEYS) do
  local flat = redis.call('HGETALL', key)
  local fields = {}
  for j = 1, #flat, 2 do
    fields[flat[j]] = flat[j + 1]
  end
  local row = {}
  for name, quota in pairs(fields) do
    if string.sub(name, 1, 2) == 'q:' then
      local prize = string.sub(name, 3)
      row[#row + 1] = prize
      row[#row + 1] = quota
      row[#row + 1] = fields['i:' .. prize] or '0'
      row[#row + 1] = fields['r:' .. prize] or '-1'
    end
  end
  out[i] = row
end
return out
