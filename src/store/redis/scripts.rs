//! The Lua scripts, one per store operation: each prunes what has run out (the prelude),
//! then decides, atomically in Redis, in one round trip.

use redis::Script;

/// Common preamble: Redis time in ms, and prune leases that have run out.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local function touch()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(last[2])) + 1000)
  end
end
"#;

/// ARGV: limit, ttl_ms, new id. Returns {admitted 0|1|2, active, retry_after_ms, expired}:
/// 2 when the id was live already (renewed, not counted again).
const OPEN: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[3])
  touch()
  return {2, redis.call('ZCARD', KEYS[1]), 0, expired}
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, n, math.floor(tonumber(first[2])) - now, expired}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
touch()
return {1, n + 1, 0, expired}
"#;

/// ARGV: id, ttl_ms. Pushes a live lease's expiry out. Returns {renewed 0|1, expired}.
const RENEW: &str = r#"
-- Existence, not ZADD's change count: a renewal in the same millisecond changes nothing.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {0, expired}
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
touch()
return {1, expired}
"#;

/// ARGV: id, ttl_ms. A held lease's refresh: pushes its expiry out, and writes it back if
/// it is missing without having been ended (a tombstone in KEYS[2]). Returns {0 ended |
/// 1 refreshed | 2 written back, expired}.
const REFRESH: &str = r#"
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  touch()
  return {1, expired}
end
local ended = redis.call('ZSCORE', KEYS[2], ARGV[1])
if ended and tonumber(ended) > now then
  return {0, expired}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
touch()
return {2, expired}
"#;

/// ARGV: id, ttl_ms, channel, user. Removes a lease, leaves a tombstone for one TTL, and
/// tells every instance (`PUBLISH "<id> <user>"`) so they cut its requests in flight.
/// Returns {removed 0|1, expired}.
const END: &str = r#"
local ok = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + 1000)
if ok == 1 then
  redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' ' .. ARGV[4])
end
return {ok, expired}
"#;

/// Returns {expired, now, id1, expiry1, id2, expiry2, ...}.
const LIST: &str = r#"
local out = {expired, now}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all do out[#out + 1] = all[i] end
return out
"#;

pub(super) struct Scripts {
    pub(super) open: Script,
    pub(super) renew: Script,
    pub(super) refresh: Script,
    pub(super) end: Script,
    pub(super) list: Script,
}

/// The end script's whole source, for an `EVAL` that must not depend on `EVALSHA`.
pub(super) fn end_source() -> String {
    format!("{PRELUDE}{END}")
}

impl Scripts {
    pub(super) fn new() -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            open: script(OPEN),
            renew: script(RENEW),
            refresh: script(REFRESH),
            end: script(END),
            list: script(LIST),
        }
    }
}
