-- A bucket's counters and the moment they were read, in one atomic read: a reconcile running beside claims
-- compares them with the claims settled up to that moment (their records carry the time of this same node's
-- clock). KEYS: the task hashes, all of one bucket.
-- Returns {"<sec>.<usec>", then task_rows.lua's row a task, in KEYS order}.
local clock = redis.call('TIME')
local out = {string.format('%d.%06d', tonumber(clock[1]), tonumber(clock[2]))}
for _, row in ipairs(task_rows(KEYS)) do
  out[#out + 1] = row
end
return out
