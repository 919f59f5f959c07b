-- A cluster's claim binds its id first, on the id's own bucket (redis_layout.py id_bucket), then settles on the
-- task's: the two are different slots. KEYS: 1 the binding, 2 the bucket's filter, 3 the bucket's epoch.
-- args (ARGV by name, redis_layout.py BIND_ARGS): claim_id, claim_of (the claim: "<user>\t<task>\t<poi>"),
--       checked ('1': the record database has no such claim), filter_bits
-- Returns 'new' (bound now), 'bound' (to this claim before), 'claim_id_taken', 'ask_record' (claim_ids.lua) or
-- 'state_lost' (the bucket has no epoch).
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 'state_lost'
end
local state = binding(KEYS[1], KEYS[2], args.claim_id, args.claim_of, args.checked, tonumber(args.filter_bits))
if state == 'new' then
  bind(KEYS[1], args.claim_of)
elseif state == 'taken' then
  return 'claim_id_taken'
elseif state == 'ask' then
  return 'ask_record'
end
return state
