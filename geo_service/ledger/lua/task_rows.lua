-- The counters of the task hashes named in `keys` (all of one bucket, so one slot), in order: one flat array
-- {prize, quota, issued, rate, prize, ...} a task. Shared by read_tasks.lua and counters_at.lua.
local function task_rows(keys)
  local out = {}
  for i, key in ipairs(keys) do
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
end
