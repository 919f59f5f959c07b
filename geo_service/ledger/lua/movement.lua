-- The movement check alone, under the player's own hash tag: a cluster's claim makes this call first.
-- KEYS: 1 the player's position hash (lat, lng, at)
-- ARGV: 1 lat, 2 lng, 3 at (epoch s), 4 max speed (m/s), 5 seconds to keep the position
-- Returns 1 when plausible, 0 when not.
return plausible(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
