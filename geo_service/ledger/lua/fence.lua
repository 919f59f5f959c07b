-- Take a bucket's epoch if its node went back in time: the shipping group's last delivered entry is behind the
-- entry shipping has reached (flow_marks), as on a replica promoted or an old copy loaded. Claims do not move
-- that id, so a claim landing first cannot hide it; and a restore moves it past the mark before it gives the
-- epoch back, so this cannot undo a restore (a script runs whole, between the restore's steps).
-- KEYS: 1 the bucket's flow stream, 2 its epoch. ARGV: 1 the group's name, 2, 3 the mark (ms, seq).
-- Returns the group's last delivered id when it took the epoch, else false.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #group, 2 do
    fields[group[i]] = group[i + 1]
  end
  if fields['name'] == ARGV[1] then
    local ms, seq = string.match(fields['last-delivered-id'], '^(%d+)-(%d+)$')
    ms, seq = tonumber(ms), tonumber(seq)
    local mark_ms, mark_seq = tonumber(ARGV[2]), tonumber(ARGV[3])
    -- 0-0: a group made afresh (the stream deleted by hand, the node emptied): a gap, or a bucket without its
    -- epoch already; not a node gone back in time.
    local fresh = ms == 0 and seq == 0
    if not fresh and (ms < mark_ms or (ms == mark_ms and seq < mark_seq)) and redis.call('DEL', KEYS[2]) == 1 then
      return fields['last-delivered-id']
    end
  end
end
return false
