-- Put claim ids into a bucket's filter (claim_ids.lua) and give their bindings an expiry: the shipper, once their
-- records are in the record database, and a repair refilling the filter of a bucket that lost its state.
-- KEYS: 1 the filter, 2.. the ids' bindings (none: leave bindings alone). ARGV: 1 filter_bits, 2 the bindings'
-- expiry in s, 3.. the claim ids (in KEYS' order). Returns how many ids.
local bits, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
  seen_before(KEYS[1], ARGV[i], bits)
  if KEYS[i - 1] then
    redis.call('EXPIRE', KEYS[i - 1], ttl)
  end
end
return #ARGV - 2
