-- The batch read: which event-id digests were seen, and the entities' states.
-- ARGV: n_slots, slot keys..., n_digests, digests..., n_entities, entity keys...
-- Returns {indexes (1-based) of digests already seen, states ('' when absent)}.
-- Only the few seen indexes travel back, not a flag per digest per slot.
local argv, i = ARGV, 0
local function num() i = i + 1; return tonumber(argv[i]) end
local n_slots = num()
local slots_from = i + 1
i = i + n_slots
local n_ids = num()
local ids_from = i + 1
i = i + n_ids
local seen, marked = {}, {}
local CHUNK = 4000
for s = slots_from, slots_from + n_slots - 1 do
  for from = ids_from, ids_from + n_ids - 1, CHUNK do
    local to = math.min(from + CHUNK - 1, ids_from + n_ids - 1)
    local flags = redis.call('SMISMEMBER', argv[s], unpack(argv, from, to))
    for j = 1, #flags do
      local index = from - ids_from + j
      if flags[j] == 1 and not marked[index] then
        marked[index] = true
        seen[#seen + 1] = index
      end
    end
  end
end
local n_ent = num()
local states = {}
if n_ent > 0 then
  for from = i + 1, i + n_ent, CHUNK do
    local to = math.min(from + CHUNK - 1, i + n_ent)
    local values = redis.call('MGET', unpack(argv, from, to))
    for j = 1, #values do states[#states + 1] = values[j] or '' end
  end
end
return {seen, states}
