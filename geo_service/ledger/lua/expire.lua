-- Give keys an expiry in one call: the outcomes of a batch of shipped claims, all of one bucket (one slot).
-- KEYS: the keys. ARGV: 1 the expiry in s. Returns how many.
for _, key in ipairs(KEYS) do
  redis.call('EXPIRE', key, ARGV[1])
end
return #KEYS
