-- A bucket's counters and the moment they were read, in one atomic read: a reconcile running beside claims
-- compares them with the claims settled up to that moment (their records carry the time of this same node's
-- clock). KEYS: the task hashes, all of one bucket.
-- Returns {"<sec>.<usec>", {prize, issued, prize, issued, ...} a task, in KEYS order}.
local clock = redis.call('TIME')
local out = {string.format('%d.%06d', tonumber(clock[1]), tonumber(clock[2]))}
for i, key in ipairs(KEYS) do
  local flat = redis.call('HGETALL', key)
  local fields = {}
  for j = 1, #flat, 2 do
    fields[flat[j]] = flat[j + 1]
  end
  local row = {}
  for name, _ in pairs(fields) do
    if string.sub(name, 1, 2) == 'q:' then
      local prize = string.sub(name, 3)
      row[#row + 1] = prize
      row[#row + 1] = fields['i:' .. prize] or '0'
    end
  end
  out[i + 1] = row
end
return out
