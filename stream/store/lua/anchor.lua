-- Re-anchor one partition's applied offset, only if it still holds what the caller read
-- (a compare-and-set: a worker that applied meanwhile wins, and the caller reads again).
-- Used by the worker (an empty Redis rebuilt from the log start, records deleted by
-- retention before they were applied) and by `crm-kpi offsets reset`.
-- KEYS: offsets hash, log marks hash, gaps hash.
-- ARGV: field, expected ('-1': none stored), new offset ('-1': delete it),
--       mark ('': delete it), records lost (added to the gap, 0: none), now (unix s).
local field, expected, new, mark = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lost, now = tonumber(ARGV[5]), ARGV[6]
local cur = redis.call('HGET', KEYS[1], field) or '-1'
if cur ~= expected then return {'changed', cur} end
-- Before the first write: fails whole if a key is not served here (a slot being migrated;
-- see apply.lua 5), so the offset is never moved without its mark and gap.
redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3])
if new == '-1' then redis.call('HDEL', KEYS[1], field) else redis.call('HSET', KEYS[1], field, new) end
if mark == '' then redis.call('HDEL', KEYS[2], field) else redis.call('HSET', KEYS[2], field, mark) end
if lost > 0 then
  -- 'records:since': records the KPIs miss on this partition, and when the latest were lost.
  local before = redis.call('HGET', KEYS[3], field)
  local total = lost
  if before then total = total + (tonumber(string.match(before, '^(%d+)')) or 0) end
  redis.call('HSET', KEYS[3], field, string.format('%.0f', total) .. ':' .. now)
end
return {'ok', cur}
