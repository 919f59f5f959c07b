-- A claim id's first use, remembered as long as its record (redis_layout.py): its binding (the claim it belongs
-- to: "<user>\t<task>\t<poi>") while the binding lives, and after that a Bloom filter of every id the bucket has
-- bound. An id the filter may have seen, with no binding left, is not settled afresh: the caller asks the record
-- database, and comes back with checked = '1' only when the record has no such claim (a false positive).
-- Shared by claim.lua (one node), bind.lua (a cluster), seen.lua and remember.lua.
local FILTER_HASHES = 7

-- The filter's bit positions of an id: double hashing over two 32-bit words of its SHA-1 (exact in Lua's doubles).
local function filter_bits(id, bits)
  local h = redis.sha1hex(id)
  local h1, h2 = tonumber(string.sub(h, 1, 8), 16), tonumber(string.sub(h, 9, 16), 16)
  local out = {}
  for i = 0, FILTER_HASHES - 1 do
    out[#out + 1] = (h1 + i * h2) % bits
  end
  return out
end

local function seen(key, id, bits)
  for _, bit in ipairs(filter_bits(id, bits)) do
    if redis.call('GETBIT', key, bit) == 0 then
      return false
    end
  end
  return true
end

local function remember(key, id, bits)
  for _, bit in ipairs(filter_bits(id, bits)) do
    redis.call('SETBIT', key, bit, 1)
  end
end

-- Where an id stands, written nothing: 'bound' (to this claim), 'taken' (by another), 'ask' (maybe used
-- before, binding gone), or 'new'.
local function binding(bind_key, seen_key, id, mine, checked, bits)
  local holder = redis.call('GET', bind_key)
  if holder then
    if holder == mine then
      return 'bound'
    end
    return 'taken'
  end
  if checked ~= '1' and seen(seen_key, id, bits) then
    return 'ask'
  end
  return 'new'
end

-- Bind a new id: no expiry until its record is in the record database (the shipper sets one then).
local function bind(bind_key, seen_key, id, mine, bits)
  remember(seen_key, id, bits)
  redis.call('SET', bind_key, mine)
end
