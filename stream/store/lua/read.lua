-- Read every window's summed counters and the current state in one call.
-- ARGV: n_windows, then per window (bucket key prefix, distinct key prefix, first bucket,
--       last bucket); the distinct and repeated answer codes; n_distinct, distinct names;
--       current hash key; n_zsets, then per zset (key, score threshold).
-- Returns {window sums..., current hash, zset stats...}; sums as flat field/value lists,
-- each ending with '<distinct code>|<name>' (distinct members) and '<repeated code>|<name>'
-- (members counted >= 2); the codes come from stream/kpis/registry.py (DISTINCT_CODE, REPEATED_CODE).
local argv, i = ARGV, 0
local function nxt() i = i + 1; return argv[i] end
local function num() i = i + 1; return tonumber(argv[i]) end

local out = {}
local n_windows = num()
local specs = {}
for w = 1, n_windows do
  local prefix, dprefix = nxt(), nxt()
  local first, last = num(), num()
  specs[w] = {prefix, dprefix, first, last}
end
local distinct_code, repeated_code = nxt(), nxt()
local n_names = num()
local names = {}
for j = 1, n_names do names[j] = nxt() end
for w = 1, n_windows do
  local prefix, dprefix, first, last = specs[w][1], specs[w][2], specs[w][3], specs[w][4]
  local sums, order = {}, {}
  for k = first, last do
    local flat = redis.call('HGETALL', prefix .. k)
    for j = 1, #flat, 2 do
      local f = flat[j]
      local v = tonumber(flat[j + 1])
      if sums[f] == nil then sums[f] = v; order[#order + 1] = f else sums[f] = sums[f] + v end
    end
  end
  local flat = {}
  for _, f in ipairs(order) do
    flat[#flat + 1] = f
    -- Integer sums beyond 2^53 lose nothing that a float64 gauge would keep.
    flat[#flat + 1] = string.format('%.17g', sums[f])
  end
  for _, name in ipairs(names) do
    local counts, distinct, repeated = {}, 0, 0
    for k = first, last do
      local members = redis.call('HGETALL', dprefix .. k .. ':' .. name)
      for j = 1, #members, 2 do
        local m = members[j]
        counts[m] = (counts[m] or 0) + tonumber(members[j + 1])
      end
    end
    for _, c in pairs(counts) do
      if c >= 1 then distinct = distinct + 1 end
      if c >= 2 then repeated = repeated + 1 end
    end
    flat[#flat + 1] = distinct_code .. '|' .. name; flat[#flat + 1] = tostring(distinct)
    flat[#flat + 1] = repeated_code .. '|' .. name; flat[#flat + 1] = tostring(repeated)
  end
  out[#out + 1] = flat
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
