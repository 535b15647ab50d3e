-- Read what changed in every window since the caller's last read, and the current state, in one call.
-- ARGV: the bucket token field; n_windows, then per window (bucket key prefix, distinct key prefix,
--       first bucket, last bucket, n_cached, then n_cached (bucket, token) the caller holds);
--       the distinct and repeated answer codes; n_distinct, distinct names;
--       current hash key; n_zsets, then per zset (key, score threshold).
-- Returns {per window {fetched, gone, distinct}..., current hash, zset stats...}:
--   fetched: flat {bucket, token, {field, value, ...}, ...} for every bucket in [first, last]
--            whose token differs from the caller's (all of them for a caller holding none;
--            token '' for a bucket written before tokens existed: always fetched);
--   gone:    buckets the caller holds that no longer exist;
--   distinct: {'<distinct code>|<name>', members, '<repeated code>|<name>', members >= 2, ...},
--            the codes come from stream/kpis/registry.py (DistinctCount).
-- Summing is the caller's (stream/store/reader.py): it keeps each window's sums and applies
-- only the buckets that changed, so a scrape costs what changed, not the whole window.
local argv, i = ARGV, 0
local function nxt() i = i + 1; return argv[i] end
local function num() i = i + 1; return tonumber(argv[i]) end

local token_field = nxt()
local n_windows = num()
local specs = {}
for w = 1, n_windows do
  local prefix, dprefix = nxt(), nxt()
  local first, last = num(), num()
  local held = {}
  for _ = 1, num() do
    local k = nxt()
    held[k] = nxt()
  end
  specs[w] = {prefix, dprefix, first, last, held}
end
local distinct_code, repeated_code = nxt(), nxt()
local names = {}
for j = 1, num() do names[j] = nxt() end

local out = {}
for w = 1, n_windows do
  local prefix, dprefix, first, last, held = specs[w][1], specs[w][2], specs[w][3], specs[w][4], specs[w][5]
  local fetched, gone = {}, {}
  for k = first, last do
    local key = prefix .. k
    local ks = tostring(k)
    local token = redis.call('HGET', key, token_field)
    if not token then
      if redis.call('EXISTS', key) == 1 then token = '' end
    end
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
  local distinct = {}
  for _, name in ipairs(names) do
    local counts, n_distinct, n_repeated = {}, 0, 0
    for k = first, last do
      local members = redis.call('HGETALL', dprefix .. k .. ':' .. name)
      for j = 1, #members, 2 do
        local m = members[j]
        counts[m] = (counts[m] or 0) + tonumber(members[j + 1])
      end
    end
    for _, c in pairs(counts) do
      if c >= 1 then n_distinct = n_distinct + 1 end
      if c >= 2 then n_repeated = n_repeated + 1 end
    end
    distinct[#distinct + 1] = distinct_code .. '|' .. name; distinct[#distinct + 1] = n_distinct
    distinct[#distinct + 1] = repeated_code .. '|' .. name; distinct[#distinct + 1] = n_repeated
  end
  out[#out + 1] = {fetched, gone, distinct}
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
