-- Read the entity states one batch touches: MGET of the keys listed in ARGV[1] (a JSON array).
-- One argument instead of one per key: the client packs every argument in Python, which
-- costs more than the read itself for thousands of keys (stream/store/writer.py).
-- KEYS[1] (the offsets hash) is only declared so a cluster client routes the call to the
-- slot every key of the prefix shares; it is not read.
local keys = cjson.decode(ARGV[1])
local out = {}
local CHUNK = 4000  -- unpack() is bounded by Lua's stack
for from = 1, #keys, CHUNK do
  local values = redis.call('MGET', unpack(keys, from, math.min(from + CHUNK - 1, #keys)))
  for j = 1, #values do out[#out + 1] = values[j] end
end
return out
