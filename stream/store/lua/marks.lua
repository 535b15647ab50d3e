-- Read, in one atomic step, each partition's applied offset and last-record fingerprint.
-- KEYS: offsets hash, log marks hash. ARGV: the 'topic:partition' fields.
-- (A script rather than MULTI: the worker's ACL allows EVALSHA, not transactions.)
return {redis.call('HMGET', KEYS[1], unpack(ARGV)), redis.call('HMGET', KEYS[2], unpack(ARGV))}
