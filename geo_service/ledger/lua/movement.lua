-- The movement check alone, under the player's own hash tag: a cluster's claim makes this call first.
-- KEYS: 1 the player's position hash (lat, lng, at)
-- args (ARGV by name, redis_layout.py MOVE_ARGS): lat, lng, at_s (epoch s), max_speed_mps, position_ttl_s
-- Returns 1 when plausible, 0 when not.
return plausible(KEYS[1], args.lat, args.lng, args.at_s, args.max_speed_mps, args.position_ttl_s)
