-- Undo a binding made for a claim the claim script then refused (its outcome belongs to another player, or its
-- bucket takes no claims): the binding goes only if it is still this claim's; the filter keeps the id, which
-- costs a later reuse of it one look in the record database. KEYS: 1 the binding. ARGV: 1 the claim it binds.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
