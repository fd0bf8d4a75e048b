//! The Lua scripts, one per store operation: each prunes what has run out (the prelude),
//! then decides, atomically in Redis, in one round trip.

use redis::Script;

/// Common preamble: Redis time in ms, and prune leases that have run out.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
-- Remember `id` as gone (`reason`, when, until when) for `ms`, in the user's `gone` hash,
-- which lives as long as its newest entry.
local function bury(key, id, reason, ms)
  if ms <= 0 then return end
  redis.call('HSET', key, id, reason .. ' ' .. now .. ' ' .. (now + ms))
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end
-- The user's rules (the admin API's, in the `rules` hash): the limit that applies instead
-- of `limit`, or nil and the block's time left.
local function ruled(key, limit)
  local r = redis.call('HMGET', key, 'limit', 'block')
  if r[2] and tonumber(r[2]) > now then
    return nil, tonumber(r[2]) - now
  end
  if r[1] then
    local n, untl = string.match(r[1], '^(%d+) (%d+)$')
    if untl and tonumber(untl) > now then
      limit = tonumber(n)
    end
  end
  return limit, 0
end
-- Note when a stream opened and which instance served it last (for the admin listing),
-- in the user's `meta` hash, which lives a day past its last write.
local function note(key, id, opened, instance)
  redis.call('HSET', key, id, opened .. ' ' .. instance)
end
-- The keys that describe the user's leases (set by the scripts that have them) live
-- exactly as long as the leases: an idle user costs nothing.
local META, DEVICES = nil, nil
local function touch()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then
    local at = math.floor(tonumber(last[2])) + 1000
    redis.call('PEXPIREAT', KEYS[1], at)
    if META then redis.call('PEXPIREAT', META, at) end
    if DEVICES then redis.call('PEXPIREAT', DEVICES, at) end
  end
end
"#;

/// KEYS: streams, ended, rules, meta. ARGV: limit, ttl_ms, new id, instance. Returns {admitted 0|1|2|5,
/// active, retry_after_ms, expired}: 2 when the id was live already (renewed, not counted
/// again), 5 when the user is blocked (retry_after: the block's time left).
const OPEN: &str = r#"
META = KEYS[4]
local limit, blocked = ruled(KEYS[3], tonumber(ARGV[1]))
if not limit then
  return {5, 0, blocked, expired}
end
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[3])
  touch()
  return {2, redis.call('ZCARD', KEYS[1]), 0, expired}
end
local n = redis.call('ZCARD', KEYS[1])
if n >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, n, math.floor(tonumber(first[2])) - now, expired}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[3])
note(KEYS[4], ARGV[3], now, ARGV[4])
touch()
return {1, n + 1, 0, expired}
"#;

/// KEYS: streams, ended, gone, cooldown, rules, devices, meta. ARGV: limit, ttl_ms, new id,
/// given (1: the client named the id), mode (0 refuse, 1 evict oldest, 2 evict idle),
/// idle_ms, cooldown_ms, tombstone_ms, evictions channel, user, device ('' none),
/// replacements channel, instance. An open that replaces the lease its device holds and, at the limit, may end the
/// user's least recently renewed lease (score = last renewal or hold refresh + TTL; a hold
/// refreshes often enough that it never looks idle) and take its place. Returns {0 refused |
/// 1 admitted | 2 renewed | 3 cooling down | 4 admitted by eviction | 5 blocked | 6
/// admitted in its device's place, active, retry_after_ms, expired, evicted or replaced id}.
const OPEN_WITH: &str = r#"
META, DEVICES = KEYS[7], KEYS[6]
local limit, blocked = ruled(KEYS[5], tonumber(ARGV[1]))
if not limit then
  return {5, 0, blocked, expired, ''}
end
local ttl = tonumber(ARGV[2])
if ARGV[4] == '1' and redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[3])
  touch()
  return {2, redis.call('ZCARD', KEYS[1]), 0, expired, ''}
end
local n = redis.call('ZCARD', KEYS[1])
local dev = ARGV[11]
local function admit()
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[3])
  note(KEYS[7], ARGV[3], now, ARGV[13])
  if dev ~= '' then
    redis.call('HSET', KEYS[6], dev, ARGV[3])
  end
  touch()
end
-- Ended on purpose: a hold still refreshing it on another instance must not write it back.
local function drop(id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[7], id)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('ZADD', KEYS[2], now + ttl, id)
  redis.call('PEXPIRE', KEYS[2], ttl + 1000)
end
if dev ~= '' then
  local old = redis.call('HGET', KEYS[6], dev)
  if old and old ~= ARGV[3] and redis.call('ZSCORE', KEYS[1], old) then
    drop(old)
    admit()
    redis.call('PUBLISH', ARGV[12], old .. ' ' .. ARGV[10])
    return {6, n, 0, expired, old}
  end
end
if n < limit then
  admit()
  return {1, n + 1, 0, expired, ''}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local retry = math.floor(tonumber(first[2])) - now
if n > limit or ARGV[5] == '0' then
  return {0, n, retry, expired, ''}
end
local cool = redis.call('PTTL', KEYS[4])
if cool > 0 then
  return {3, n, cool, expired, ''}
end
local victim = nil
if ARGV[5] == '1' then
  victim = first[1]
else
  local idle = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now + ttl - tonumber(ARGV[6]), 'LIMIT', 0, 1)
  victim = idle[1]
end
if not victim then
  return {0, n, retry, expired, ''}
end
drop(victim)
bury(KEYS[3], victim, 'evicted', tonumber(ARGV[8]))
if tonumber(ARGV[7]) > 0 then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[7])
end
admit()
redis.call('PUBLISH', ARGV[9], victim .. ' ' .. ARGV[10])
return {4, n, 0, expired, victim}
"#;

/// KEYS: streams, rules, meta, devices. ARGV: id, ttl_ms. Pushes a live lease's expiry
/// out, unless the user is blocked. Returns {renewed 0|1, expired}.
const RENEW: &str = r#"
META, DEVICES = KEYS[3], KEYS[4]
-- Existence, not ZADD's change count: a renewal in the same millisecond changes nothing.
if not ruled(KEYS[2], 0) or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {0, expired}
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
touch()
return {1, expired}
"#;

/// KEYS: streams, ended, gone, meta. ARGV: id, ttl_ms, instance. A held lease's refresh
/// (noting the instance that holds it): pushes its expiry out, and writes it back if
/// it is missing without having been ended (a tombstone in KEYS[2], or KEYS[3] `gone`).
/// Returns {0 ended | 1 refreshed | 2 written back | 3 evicted, expired}.
const REFRESH: &str = r#"
META = KEYS[4]
local function served()
  local m = redis.call('HGET', KEYS[4], ARGV[1])
  local opened = (m and string.match(m, '^(%d+) ')) or now
  note(KEYS[4], ARGV[1], opened, ARGV[3])
end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
  served()
  touch()
  return {1, expired}
end
local gone = redis.call('HGET', KEYS[3], ARGV[1])
if gone and string.sub(gone, 1, 8) == 'evicted ' then
  return {3, expired}
end
local ended = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (ended and tonumber(ended) > now) or gone then
  return {0, expired}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
served()
touch()
return {2, expired}
"#;

/// KEYS: streams, ended, gone, meta. ARGV: id, ttl_ms, channel, user, gone_ms, reason,
/// publish (1: an end others must cut; 0: a failed open giving its own slot back). Removes
/// a lease, leaves a tombstone for one TTL (and, with `gone_ms`, remembers the id as gone
/// for that long), and tells every instance (`PUBLISH "<id> <user>"`) so they cut its
/// requests in flight. Returns {removed 0|1, expired}.
const END: &str = r#"
local ok = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) + 1000)
if ok == 1 then
  bury(KEYS[3], ARGV[1], ARGV[6], tonumber(ARGV[5]))
  if ARGV[7] == '1' then
    redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' ' .. ARGV[4])
  end
end
return {ok, expired}
"#;

/// KEYS: gone. ARGV: id. Returns "<reason> <at_ms>" while the id is remembered as gone,
/// else nil. (No prelude: the key is a hash, not the streams set.)
const GONE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reason, at, untl = string.match(v, '^(%S+) (%d+) (%d+)$')
if not untl or tonumber(untl) <= now then return false end
return reason .. ' ' .. at
"#;

/// KEYS: rules. ARGV: kind (`limit` | `block`), limit, ttl_ms. Sets a rule until now +
/// ttl; the hash lives as long as its longest rule.
const SET_RULE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[3])
if ARGV[1] == 'limit' then
  redis.call('HSET', KEYS[1], 'limit', ARGV[2] .. ' ' .. (now + ms))
else
  redis.call('HSET', KEYS[1], 'block', tostring(now + ms))
end
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('PEXPIRE', KEYS[1], ms)
end
return 1
"#;

/// KEYS: rules. Returns {limit or -1, its ms left or -1, block ms left or -1}.
const RULES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = redis.call('HMGET', KEYS[1], 'limit', 'block')
local out = {-1, -1, -1}
if r[1] then
  local n, untl = string.match(r[1], '^(%d+) (%d+)$')
  if untl and tonumber(untl) > now then
    out[1] = tonumber(n)
    out[2] = tonumber(untl) - now
  end
end
if r[2] and tonumber(r[2]) > now then
  out[3] = tonumber(r[2]) - now
end
return out
"#;

/// KEYS: streams, meta, devices. Returns {expired, now, then per lease: id, expiry,
/// "<opened> <instance>" or '', device hash or ''}; meta entries of leases gone are dropped.
const LIST: &str = r#"
local out = {expired, now}
local devices = {}
local d = redis.call('HGETALL', KEYS[3])
for i = 1, #d, 2 do devices[d[i + 1]] = d[i] end
local live = {}
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  local id = all[i]
  live[id] = true
  out[#out + 1] = id
  out[#out + 1] = all[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
  out[#out + 1] = devices[id] or ''
end
local m = redis.call('HKEYS', KEYS[2])
for i = 1, #m do
  if not live[m[i]] then redis.call('HDEL', KEYS[2], m[i]) end
end
return out
"#;

pub(super) struct Scripts {
    pub(super) open: Script,
    pub(super) open_with: Script,
    pub(super) gone: Script,
    pub(super) set_rule: Script,
    pub(super) rules: Script,
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
            open_with: script(OPEN_WITH),
            gone: Script::new(GONE),
            set_rule: Script::new(SET_RULE),
            rules: Script::new(RULES),
            renew: script(RENEW),
            refresh: script(REFRESH),
            end: script(END),
            list: script(LIST),
        }
    }
}
