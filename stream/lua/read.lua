-- Read every window's summed counters and the current state in one call.
-- ARGV: n_windows, then per window (key prefix, first bucket, last bucket);
--       current hash key; n_zsets, then per zset (key, score threshold).
-- Returns {window sums..., current hash, zset stats...}; sums as flat field/value lists.
local argv, i = ARGV, 0
local function nxt() i = i + 1; return argv[i] end
local function num() i = i + 1; return tonumber(argv[i]) end

local out = {}
local n_windows = num()
for _ = 1, n_windows do
  local prefix, first, last = nxt(), num(), num()
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
