-- The movement check, per player across tasks: was the player's last claimed position reachable from
-- this one at a person's speed? Keeps the new position if so. Great-circle distance as in
-- geo_service/snapshot/grid.py:distance_m, on the radius redis_layout.py prepends (EARTH_RADIUS_M). Shared by
-- movement.lua and claim.lua (prepended to both).
local function plausible(key, lat, lng, at, max_speed, ttl)
  local last = redis.call('HMGET', key, 'lat', 'lng', 'at')
  if last[1] then
    local p0, p1 = math.rad(tonumber(last[1])), math.rad(tonumber(lat))
    local dlng = math.rad(tonumber(lng) - tonumber(last[2]))
    local a = math.sin((p1 - p0) / 2) ^ 2 + math.cos(p0) * math.cos(p1) * math.sin(dlng / 2) ^ 2
    local metres = 2 * EARTH_RADIUS_M * math.asin(math.sqrt(math.min(a, 1.0)))
    local seconds = math.max(tonumber(at) - tonumber(last[3]), 1.0)
    if metres / seconds > tonumber(max_speed) then
      return 0
    end
  end
  redis.call('HSET', key, 'lat', lat, 'lng', lng, 'at', at)
  redis.call('EXPIRE', key, ttl)
  return 1
end
