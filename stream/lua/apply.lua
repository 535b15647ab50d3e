-- Apply one batch atomically (SPEC §6): check, then write; never half of it.
-- KEYS[1]: the offsets hash. ARGV is a flat list read front to back (see store.py).
-- Every check runs before the first write, so a refused batch changes nothing.
local argv, i = ARGV, 0
local function nxt() i = i + 1; return argv[i] end
local function num() i = i + 1; return tonumber(argv[i]) end

-- 1. Offset fence: each partition's stored next-offset must be what the worker expects.
local n_off = num()
local offsets = {}
for _ = 1, n_off do
  local field, expected, new = nxt(), nxt(), nxt()
  local cur = redis.call('HGET', KEYS[1], field) or '-1'
  if cur ~= expected then return {'offset', field, cur} end
  offsets[#offsets + 1] = field; offsets[#offsets + 1] = new
end

-- 2. Dedupe: the batch's event-id digests arrive as one blob of 16-byte digests.
-- Any digest already in a live slot is a duplicate: report them all, write nothing.
local dd_key, dd_expire_at = nxt(), num()
local n_slots = num()
local slots = {}
for j = 1, n_slots do slots[j] = nxt() end
local blob = nxt()
local n_ids = #blob / 16
local ids = {}
for j = 1, n_ids do ids[j] = string.sub(blob, 16 * j - 15, 16 * j) end
local CHUNK = 4000
local dups = {}
for _, slot in ipairs(slots) do
  for from = 1, n_ids, CHUNK do
    local to = math.min(from + CHUNK - 1, n_ids)
    local seen = redis.call('SMISMEMBER', slot, unpack(ids, from, to))
    for j = 1, #seen do
      if seen[j] == 1 then dups[#dups + 1] = from + j - 1 end
    end
  end
end
if #dups > 0 then return {'duplicate', unpack(dups)} end

-- 3. Entity states: each must still hold what the worker read.
local n_ent = num()
local ent_from = i + 1
for _ = 1, n_ent do
  local key, old = nxt(), nxt()
  i = i + 2 -- new value and TTL (ms, 0 = none), used below
  local cur = redis.call('GET', key) or ''
  if cur ~= old then return {'entity', key} end
end

-- All checks passed: write.
for from = 1, n_ids, CHUNK do
  redis.call('SADD', dd_key, unpack(ids, from, math.min(from + CHUNK - 1, n_ids)))
end
if n_ids > 0 then redis.call('EXPIREAT', dd_key, dd_expire_at) end

for j = 0, n_ent - 1 do
  local at = ent_from + 4 * j
  local ttl = tonumber(argv[at + 3])
  if ttl > 0 then
    redis.call('SET', argv[at], argv[at + 2], 'PX', ttl)
  else
    redis.call('SET', argv[at], argv[at + 2])
  end
end

local n_buckets = num()
for _ = 1, n_buckets do
  local key, expire_at, n_fields = nxt(), nxt(), num()
  for _ = 1, n_fields do
    redis.call('HINCRBY', key, nxt(), nxt())
  end
  redis.call('EXPIREAT', key, expire_at)
end

-- Exact distinct counts: member -> count per window bucket; a member at 0 is removed.
local n_distinct = num()
for _ = 1, n_distinct do
  local key, expire_at, n_members = nxt(), nxt(), num()
  for _ = 1, n_members do
    local member, by = nxt(), nxt()
    if redis.call('HINCRBY', key, member, by) <= 0 then redis.call('HDEL', key, member) end
  end
  redis.call('EXPIREAT', key, expire_at)
end

local cur_key, n_counters = nxt(), num()
for _ = 1, n_counters do redis.call('HINCRBY', cur_key, nxt(), nxt()) end

local n_zadd = num()
for _ = 1, n_zadd do
  local key, member, score = nxt(), nxt(), nxt()
  redis.call('ZADD', key, score, member)
end
local n_zrem = num()
for _ = 1, n_zrem do redis.call('ZREM', nxt(), nxt()) end
-- Current-state sets forget members older than the state TTL (bounded memory).
local n_prune = num()
for _ = 1, n_prune do redis.call('ZREMRANGEBYSCORE', nxt(), '-inf', '(' .. nxt()) end

if #offsets > 0 then redis.call('HSET', KEYS[1], unpack(offsets)) end
return {'ok'}
