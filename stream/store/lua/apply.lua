-- Apply one batch atomically: check, then write; never half of it (docs/delivery.md).
-- KEYS[1]: the offsets hash, KEYS[2]: the log marks hash. ARGV is a flat list read front to back (see writer.py).
-- Every check runs before the first write, so a refused batch changes nothing.
local argv, i = ARGV, 0
local function nxt() i = i + 1; return argv[i] end
local function num() i = i + 1; return tonumber(argv[i]) end

-- 1. Offset fence, per partition: the next offset Redis holds must be the one the worker
-- expects ('-1': none stored), and the batch must start exactly there (`first`): records
-- below it were skipped as applied, and a batch starting above it would leave a gap.
-- `mark` fingerprints the batch's last record (KEYS[2]), so a later resync can tell
-- whether the log still holds the records these offsets count ('' keeps the old mark).
local n_off = num()
local offsets, marks = {}, {}
for _ = 1, n_off do
  local field, expected, first, new, mark = nxt(), nxt(), nxt(), nxt(), nxt()
  local cur = redis.call('HGET', KEYS[1], field) or '-1'
  if cur ~= expected then return {'offset', field, cur} end
  if cur ~= '-1' and first ~= cur then return {'gap', field, cur, first} end
  offsets[#offsets + 1] = field; offsets[#offsets + 1] = new
  if mark ~= '' then marks[#marks + 1] = field; marks[#marks + 1] = mark end
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

-- 3. The delta: one JSON document (writer.py encode_delta). Integers arrive as
-- Lua numbers (exact below 2^53) or, beyond that, as strings; `int` spells
-- either as the integer text Redis expects.
local delta = cjson.decode(nxt())
local function int(v)
  if type(v) == 'number' then return string.format('%.0f', v) end
  return v
end

-- 4. Entity states: each must still hold what the worker read.
for _, e in ipairs(delta.entities) do
  local cur = redis.call('GET', e[1]) or ''
  if cur ~= e[2] then return {'entity', e[1]} end
end

-- 5. Every key this batch writes must be served here, before the first write. On a Redis
-- Cluster whose slot is being migrated (a reshard), a key already moved (or not yet
-- created) makes any command on it fail with "non local key" *after* the commands
-- before it ran, and a script is not rolled back: touching them all now (one EXISTS
-- per chunk fails whole if any is missing) makes such a batch fail before it writes
-- anything, and the worker retries it once the slot has moved. Elsewhere it is a no-op.
local touched = {}
for _, b in ipairs(delta.buckets) do touched[#touched + 1] = b[1] end
for _, d in ipairs(delta.distinct) do touched[#touched + 1] = d[1] end
touched[#touched + 1] = delta.current[1]
for _, z in ipairs(delta.zadd) do touched[#touched + 1] = z[1] end
for _, z in ipairs(delta.zrem) do touched[#touched + 1] = z[1] end
for _, z in ipairs(delta.prune) do touched[#touched + 1] = z[1] end
for from = 1, #touched, CHUNK do
  redis.call('EXISTS', unpack(touched, from, math.min(from + CHUNK - 1, #touched)))
end

-- All checks passed: write.
for from = 1, n_ids, CHUNK do
  redis.call('SADD', dd_key, unpack(ids, from, math.min(from + CHUNK - 1, n_ids)))
end
if n_ids > 0 then redis.call('EXPIREAT', dd_key, dd_expire_at) end

for _, e in ipairs(delta.entities) do
  -- e = {key, old, new, ttl in ms (0 = none)}
  if e[4] > 0 then
    redis.call('SET', e[1], e[3], 'PX', int(e[4]))
  else
    redis.call('SET', e[1], e[3])
  end
end

-- Each bucket written gets this batch's token (a field), so readers can tell it changed.
local token = delta.token
for _, b in ipairs(delta.buckets) do
  -- b = {key, expire_at, {field = increment}}
  for name, by in pairs(b[3]) do redis.call('HINCRBY', b[1], name, int(by)) end
  if token then redis.call('HSET', b[1], token[1], token[2]) end
  redis.call('EXPIREAT', b[1], int(b[2]))
end

-- Exact distinct counts: member -> count per window bucket; a member at 0 is removed.
-- The batch token marks these hashes too (readers skip that field when counting members).
for _, d in ipairs(delta.distinct) do
  for member, by in pairs(d[3]) do
    if redis.call('HINCRBY', d[1], member, int(by)) <= 0 then redis.call('HDEL', d[1], member) end
  end
  if token then redis.call('HSET', d[1], token[1], token[2]) end
  redis.call('EXPIREAT', d[1], int(d[2]))
end

local cur_key = delta.current[1]
for name, by in pairs(delta.current[2]) do redis.call('HINCRBY', cur_key, name, int(by)) end

for _, z in ipairs(delta.zadd) do redis.call('ZADD', z[1], z[3], z[2]) end
-- Removals: one ZREM per set, and no command on a set this batch emptied (a key gone
-- mid-script is "non local" during a slot migration: see 5).
local removals, order = {}, {}
for _, z in ipairs(delta.zrem) do
  if not removals[z[1]] then removals[z[1]] = {}; order[#order + 1] = z[1] end
  local members = removals[z[1]]
  members[#members + 1] = z[2]
end
local emptied = {}
for _, key in ipairs(order) do
  local members, size = removals[key], redis.call('ZCARD', key)
  if size > 0 then
    local removed, from = 0, 1
    while from <= #members and removed < size do
      removed = removed + redis.call('ZREM', key, unpack(members, from, math.min(from + CHUNK - 1, #members)))
      from = from + CHUNK
    end
    if removed >= size then emptied[key] = true end
  end
end
-- Current-state sets forget members older than the state TTL (bounded memory).
for _, z in ipairs(delta.prune) do
  if not emptied[z[1]] then redis.call('ZREMRANGEBYSCORE', z[1], '-inf', '(' .. z[2]) end
end

if #offsets > 0 then redis.call('HSET', KEYS[1], unpack(offsets)) end
if #marks > 0 then redis.call('HSET', KEYS[2], unpack(marks)) end
return {'ok'}
