-- Put claim ids into a bucket's filter (claim_ids.lua): a repair refills the filter of a bucket that lost its state
-- from the record database. KEYS: 1 the filter. ARGV: 1 filter_bits, 2.. the claim ids. Returns how many.
local bits = tonumber(ARGV[1])
for i = 2, #ARGV do
  seen_before(KEYS[1], ARGV[i], bits)
end
return #ARGV - 1
