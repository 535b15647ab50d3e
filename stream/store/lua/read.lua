-- Read what changed in every window since the caller's last read, and the current state, in one call,
-- for one or more partition groups (stream/store/keys.py): on a single Redis one call reads every
-- group; on a Redis Cluster each group is its own call (its keys share one slot; KEYS[1] routes it).
-- ARGV: the token field; the registry of groups to return ('' on a cluster: another slot, read apart);
--       n_groups, then per group: n_windows, then per window: bucket key prefix, distinct key prefix,
--       first bucket, last bucket, then the held list of its buckets and one held list per
--       distinct name (n_names, then per name: name, held list);
--       a held list is n, then n (bucket, token) pairs the caller already holds;
--       then the current hash key; n_zsets, then per zset (key, score threshold).
-- Returns {registry members (or {}), then one list per group:
--   {per window {buckets, distinct_1, ..., distinct_n}..., current hash, zset stats...}},
-- each of buckets / distinct_j being {fetched, gone}:
--   fetched: flat {bucket, token, {field, value, ...}, ...} for every hash in [first, last] whose
--            token differs from the caller's (all for a caller holding none; token '' for a hash
--            written before tokens existed: always fetched); the token field itself is included;
--   gone:    buckets the caller holds whose hash no longer exists.
-- Summing is the caller's (stream/store/reader.py): it keeps each window's sums and distinct
-- members and applies only what changed, so a scrape costs what changed, not the whole window.
local argv, i = ARGV, 0
local function nxt() i = i + 1; return argv[i] end
local function num() i = i + 1; return tonumber(argv[i]) end
local function held_list()
  local held = {}
  for _ = 1, num() do
    local k = nxt()
    held[k] = nxt()
  end
  return held
end

local token_field = nxt()

local function changes(key_of, first, last, held)
  local fetched, gone = {}, {}
  for k = first, last do
    local key = key_of(k)
    local ks = tostring(k)
    local token = redis.call('HGET', key, token_field)
    if not token and redis.call('EXISTS', key) == 1 then token = '' end
    if token then
      if token == '' or held[ks] ~= token then
        fetched[#fetched + 1] = ks
        fetched[#fetched + 1] = token
        fetched[#fetched + 1] = redis.call('HGETALL', key)
      end
    elseif held[ks] then
      gone[#gone + 1] = ks
    end
  end
  return {fetched, gone}
end

local function group()
  local out = {}
  local n_windows = num()
  for _ = 1, n_windows do
    local prefix, dprefix = nxt(), nxt()
    local first, last = num(), num()
    local window = {changes(function(k) return prefix .. k end, first, last, held_list())}
    for _ = 1, num() do
      local name = nxt()
      local suffix = ':' .. name
      window[#window + 1] = changes(function(k) return dprefix .. k .. suffix end, first, last, held_list())
    end
    out[#out + 1] = window
  end

  out[#out + 1] = redis.call('HGETALL', nxt())

  local n_z = num()
  for _ = 1, n_z do
    local key, threshold = nxt(), nxt()
    local lowest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    out[#out + 1] = {
      redis.call('ZCARD', key),
      redis.call('ZCOUNT', key, '-inf', threshold),
      lowest[2] or '',
    }
  end
  return out
end

local registry = nxt()
local out = {registry ~= '' and redis.call('SMEMBERS', registry) or {}}
for _ = 1, num() do out[#out + 1] = group() end
return out
