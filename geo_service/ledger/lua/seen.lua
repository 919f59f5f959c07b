-- Whether a bucket's filter may have seen a claim id (claim_ids.lua). KEYS: 1 the filter. ARGV: 1 filter_bits,
-- 2 the claim id. Returns 1 (maybe: ask the record database) or 0 (never bound here).
if seen(KEYS[1], ARGV[2], tonumber(ARGV[1])) then
  return 1
end
return 0
