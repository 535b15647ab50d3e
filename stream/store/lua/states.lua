-- Read what one batch needs before its fold, in one call (writer.py AsyncStore.read_batch):
-- the entity states it touches, and which of its event-id digests are already recorded.
-- ARGV[1]: the entity keys (a JSON array). ARGV[2]: the batch's digests as one blob of
-- 16-byte digests. ARGV[3..]: the live dedupe slot keys (writer.dedupe_slots).
-- Returns {states (nil where absent), 1-based indexes of the digests already recorded}.
-- One argument per list instead of one per key or digest: the client packs every argument
-- in Python, which costs more than the read itself for thousands of keys.
-- KEYS[1] (the offsets hash) is only declared so a cluster client routes the call to the
-- slot every key of the prefix shares; it is not read.
local keys = cjson.decode(ARGV[1])
local out = {}
local CHUNK = 4000  -- unpack() is bounded by Lua's stack
for from = 1, #keys, CHUNK do
  local values = redis.call('MGET', unpack(keys, from, math.min(from + CHUNK - 1, #keys)))
  for j = 1, #values do out[#out + 1] = values[j] end
end

-- The same lookup as apply.lua's dedupe check (every live slot, SMISMEMBER), so the fold can
-- leave out redeliveries up front. apply.lua still checks: a digest recorded after this read
-- (another worker, after a rebalance) is refused there.
local blob = ARGV[2] or ''
local n_ids = #blob / 16
local dups = {}
if n_ids > 0 then
  local ids = {}
  for j = 1, n_ids do ids[j] = string.sub(blob, 16 * j - 15, 16 * j) end
  local found = {}
  for s = 3, #ARGV do
    for from = 1, n_ids, CHUNK do
      local to = math.min(from + CHUNK - 1, n_ids)
      local seen = redis.call('SMISMEMBER', ARGV[s], unpack(ids, from, to))
      for j = 1, #seen do
        local at = from + j - 1
        -- A digest is reported once even if an older slot holds it too.
        if seen[j] == 1 and not found[at] then found[at] = true; dups[#dups + 1] = at end
      end
    end
  end
end
return {out, dups}
