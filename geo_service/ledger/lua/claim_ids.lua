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

-- Set an id's bits; return whether they all were set before (the filter may have seen it). One BITFIELD call
-- sets them all and returns the old bits: a claim pays one command, not seven GETBITs and seven SETBITs. Setting
-- the bits of an id that is then refused is harmless: it costs a later use of that id one look in the record.
local function seen_before(key, id, bits)
  local ops = {}
  for _, bit in ipairs(filter_bits(id, bits)) do
    ops[#ops + 1] = 'SET'
    ops[#ops + 1] = 'u1'
    ops[#ops + 1] = string.format('%d', bit)
    ops[#ops + 1] = 1
  end
  for _, old in ipairs(redis.call('BITFIELD', key, unpack(ops))) do
    if old == 0 then
      return false
    end
  end
  return true
end

-- Where an id stands: 'bound' (to this claim), 'taken' (by another), 'ask' (maybe used before, binding gone),
-- or 'new'. Nothing is written but the id's bits in the filter.
local function binding(bind_key, seen_key, id, mine, checked, bits)
  local holder = redis.call('GET', bind_key)
  if holder then
    if holder == mine then
      return 'bound'
    end
    return 'taken'
  end
  if seen_before(seen_key, id, bits) and checked ~= '1' then
    return 'ask'
  end
  return 'new'
end

-- Bind a new id (its bits are set: binding() set them): no expiry until its record is in the record database
-- (the shipper sets one then).
local function bind(bind_key, mine)
  redis.call('SET', bind_key, mine)
end
