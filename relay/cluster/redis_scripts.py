"""The Lua scripts the Redis cluster layer runs (relay/cluster/redis.py): each reads or
changes a device's presence and the sorted device index together, atomically.

A device record (`dev:{id}`, one string: lease, connected_at, last_seen, session and node,
one per line, so a claim is one `SET ... GET` and a release one `GETDEL`) names its node and
the node's lease (a token, new each time the node process starts); the record counts only
while `lease:{node}` holds that token, so a dead or restarted node's devices vanish from
every lookup at once. The first scripts read `lease:{node}` for the node a record names, a
key they compute: one Redis; the `S_` ones below are their Redis Cluster forms, with the
leases read by the client."""

from __future__ import annotations

# Functions every script that reads or writes a record starts with: `parse` splits a record
# (nil when absent or not one), `pack` joins one (node last: the only free-form field);
# `call` runs GET, GETDEL or SET on a record's key, and removes a key of another type first
# (the hash record of an older relay: absent, not an error); `read` is a parsed GET.
_REC = """
local function parse(v)
  if not v then return nil end
  local lease, ca, ls, session, node = string.match(v,
    '^([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n(.*)$')
  if not lease then return nil end
  return {node = node, session = session, connected_at = ca, last_seen = ls, lease = lease}
end
local function pack(lease, ca, ls, session, node)
  return lease .. '\\n' .. ca .. '\\n' .. ls .. '\\n' .. session .. '\\n' .. node
end
local function call(op, k, ...)
  local v = redis.pcall(op, k, ...)
  if type(v) == 'table' and v.err then
    if not string.find(v.err, 'WRONGTYPE', 1, true) then error(v.err) end
    redis.call('DEL', k)
    if op == 'SET' then return redis.call(op, k, ...) end
    return false
  end
  return v
end
local function read(k) return parse(call('GET', k)) end
"""

# A function every script that judges a record starts with: whether the node named in
# `rec` (node, lease) still holds that lease. `seen` caches answers per script call.
_LIVE = """
local function live(prefix, node, lease, seen)
  if (not node) or (not lease) then return false end
  local k = node .. '\\n' .. lease
  if seen[k] == nil then
    seen[k] = redis.call('GET', prefix .. 'lease:' .. node) == lease
  end
  return seen[k]
end
"""
# Claims and releases come in batches (relay.cluster.redis_presence), one script call per
# batch: KEYS the index, then one record per device, all under one key head (`dev:` on one
# Redis, a bucket's on a cluster) whose length in bytes, ARGV[2], the device's id follows;
# `ids` collects them and `index` adds or removes them, a thousand to a command.
_MANY = """
local function id_of(i) return string.sub(KEYS[i], tonumber(ARGV[2]) + 1) end
local function index(op, ids)
  for i = 1, #ids, 1000 do
    local args = {}
    for j = i, math.min(i + 999, #ids) do
      if op == 'ZADD' then table.insert(args, 0) end
      table.insert(args, ids[j])
    end
    redis.call(op, KEYS[1], unpack(args))
  end
end
"""
# ARGV node, key head length, prefix, then per device its record (packed by the client:
# relay.cluster.redis_client.join_record). The last writer wins and learns who held the
# device before when that was another node and `held` says the holder counts: per such
# device its position in the batch (from 1), the holder's node and session.
_CLAIM_MANY = """
local out, ids, seen = {}, {}, {}
for i = 2, #KEYS do
  local prev = parse(call('SET', KEYS[i], ARGV[i + 2], 'GET'))
  table.insert(ids, id_of(i))
  if prev and prev.node ~= ARGV[1] and held(prev, seen) then
    table.insert(out, i - 1)
    table.insert(out, prev.node)
    table.insert(out, prev.session)
  end
end
index('ZADD', ids)
return out"""
# One Redis: a previous holder counts while its lease lives.
CLAIM = (
    _REC
    + _LIVE
    + _MANY
    + """
local function held(prev, seen) return live(ARGV[3], prev.node, prev.lease, seen) end"""
    + _CLAIM_MANY
)
# ARGV node, key head length, then per device the session it releases. Each record is
# taken away, and put back unchanged if another session holds it now (the script is
# atomic: nobody sees it gone); the ids released leave the index. How many were released.
RELEASE = (
    _REC
    + _MANY
    + """
local ids = {}
for i = 2, #KEYS do
  local v = call('GETDEL', KEYS[i])
  if v then
    local rec = parse(v)
    if rec and rec.session == ARGV[i + 1] then
      table.insert(ids, id_of(i))
    else
      redis.call('SET', KEYS[i], v)
    end
  end
end
index('ZREM', ids)
return #ids"""
)
# KEYS index, one record per device; ARGV node, lease, prefix, then per device id, session,
# connected_at, last_seen. Per device: status, holder node, holder session, with status 0
# kept (already ours, the lease brought up to date), 1 claimed (absent, held by a node
# whose lease is gone, by this node before, or by an older connection), 2 lost to a newer.
RENEW = (
    _REC
    + _LIVE
    + """
local out, seen = {}, {}
for i = 2, #KEYS do
  local a = 4 + (i - 2) * 4
  local cur = read(KEYS[i]) or {}
  local status = 2
  if cur.node == ARGV[1] and cur.session == ARGV[a + 1] then
    status = 0
    if cur.lease ~= ARGV[2] then
      redis.call('SET', KEYS[i], pack(ARGV[2], cur.connected_at, cur.last_seen, cur.session,
                                      cur.node))
    end
  elseif cur.node == ARGV[1] or not live(ARGV[3], cur.node, cur.lease, seen)
      or (tonumber(cur.connected_at) or 0) < tonumber(ARGV[a + 2]) then
    status = 1
    redis.call('SET', KEYS[i], pack(ARGV[2], ARGV[a + 2], ARGV[a + 3], ARGV[a + 1], ARGV[1]))
    redis.call('ZADD', KEYS[1], 0, ARGV[a])
  end
  table.insert(out, status)
  table.insert(out, cur.node or '')
  table.insert(out, cur.session or '')
end
return out"""
)
# KEYS device records; ARGV per device session, last_seen. Written only while that session
# still holds the device.
SEEN = (
    _REC
    + """
for i = 1, #KEYS do
  local rec = read(KEYS[i])
  if rec and rec.session == ARGV[2 * i - 1] then
    redis.call('SET', KEYS[i], pack(rec.lease, rec.connected_at, ARGV[2 * i], rec.session,
                                    rec.node))
  end
end
return 0"""
)
# KEYS index, device records; ARGV prefix, prune flag, then the ids. Per device its row
# (node, session, connected_at, last_seen) while its node's lease lives, else an empty row;
# with the flag, members whose record is gone or dead are removed (listing cleans up).
LOOKUP = (
    _REC
    + _LIVE
    + """
local out, seen = {}, {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local rec = read(KEYS[i])
  if rec and live(ARGV[1], rec.node, rec.lease, seen) then
    table.insert(out, {rec.node, rec.session, rec.connected_at, rec.last_seen})
  else
    table.insert(out, {})
    if ARGV[2] == '1' then
      redis.call('DEL', KEYS[i])
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
return out"""
)
# KEYS the lease, the node registry; ARGV lease token, ttl ms, registry member. Whether the
# lease was still this node's (false: it lapsed, its devices may have been swept).
LEASE = """
local held = redis.call('GET', KEYS[1]) == ARGV[1]
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if not held then redis.call('SADD', KEYS[2], ARGV[3]) end
return held and 1 or 0"""
# KEYS the node registry; ARGV prefix. The members ("node\\nlease") whose lease is gone.
DEAD = """
local dead = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node, lease = string.match(m, '^(.*)\\n([^\\n]*)$')
  if (not node) or redis.call('GET', ARGV[1] .. 'lease:' .. node) ~= lease then
    table.insert(dead, m)
  end
end
return dead"""
# KEYS index; ARGV prefix, start (ZRANGEBYLEX form), count. Removes the records in the
# next `count` members whose node's lease is gone; returns the last member seen ('' at
# the end).
SWEEP = (
    _REC
    + _LIVE
    + """
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, ARGV[3])
local seen = {}
for _, id in ipairs(ids) do
  local k = ARGV[1] .. 'dev:' .. id
  local rec = read(k) or {}
  if not live(ARGV[1], rec.node, rec.lease, seen) then
    redis.call('DEL', k)
    redis.call('ZREM', KEYS[1], id)
  end
end
if #ids < tonumber(ARGV[3]) then return '' end
return ids[#ids]"""
)

# Redis Cluster (relay.cluster.redis_sharded): a script touches one slot, the bucket of its
# devices (`{prefix}{b<n>}:dev:<id>` and `{prefix}{b<n>}:devices`), so leases (each in its
# node's slot) are read by the client, not inside the scripts.

# As CLAIM, in one bucket; a claim reports the previous holder whatever its lease (the
# client tells that node to close its connection, which it does only if that session is
# still open there: a dead holder's inbox has no listener).
S_CLAIM = (
    _REC
    + _MANY
    + """
local function held() return true end"""
    + _CLAIM_MANY
)
# KEYS bucket index, its device records; ARGV node, lease, n, then n live holders
# ("node\\nlease", read by the client just before), then per device id, session,
# connected_at, last_seen. As RENEW, with a holder live only if it is in that list.
S_RENEW = (
    _REC
    + """
local live, out = {}, {}
local n = tonumber(ARGV[3])
for i = 4, 3 + n do live[ARGV[i]] = true end
for i = 2, #KEYS do
  local a = 4 + n + (i - 2) * 4
  local cur = read(KEYS[i]) or {}
  local status = 2
  if cur.node == ARGV[1] and cur.session == ARGV[a + 1] then
    status = 0
    if cur.lease ~= ARGV[2] then
      redis.call('SET', KEYS[i], pack(ARGV[2], cur.connected_at, cur.last_seen, cur.session,
                                      cur.node))
    end
  elseif cur.node == ARGV[1] or not cur.node or not live[cur.node .. '\\n' .. cur.lease]
      or (tonumber(cur.connected_at) or 0) < tonumber(ARGV[a + 2]) then
    status = 1
    redis.call('SET', KEYS[i], pack(ARGV[2], ARGV[a + 2], ARGV[a + 3], ARGV[a + 1], ARGV[1]))
    redis.call('ZADD', KEYS[1], 0, ARGV[a])
  end
  table.insert(out, status)
  table.insert(out, cur.node or '')
  table.insert(out, cur.session or '')
end
return out"""
)
# KEYS device record, bucket index; ARGV id, the lease the client found dead ('' : no
# record). Removes the record and the index member only if the record still names it.
S_PRUNE = (
    _REC
    + """
if ((read(KEYS[1]) or {}).lease or '') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return redis.call('ZREM', KEYS[2], ARGV[1])"""
)
# KEYS bucket index; ARGV its record key prefix, start (ZRANGEBYLEX form), count, then the
# dead holders ("node\\nlease"). Removes the records of the next `count` members held by
# a dead holder (or gone); the last member seen ('' at the bucket's end).
S_SWEEP = (
    _REC
    + """
local dead = {}
for i = 4, #ARGV do dead[ARGV[i]] = true end
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local k = ARGV[1] .. id
  local rec = read(k)
  if (not rec) or dead[rec.node .. '\\n' .. rec.lease] then
    redis.call('DEL', k)
    redis.call('ZREM', KEYS[1], id)
  end
end
if #ids < tonumber(ARGV[3]) then return '' end
return ids[#ids]"""
)
SHARDED_SCRIPTS = (
    ("claim", S_CLAIM),
    ("release", RELEASE),
    ("renew", S_RENEW),
    ("seen", SEEN),
    ("prune", S_PRUNE),
    ("sweep", S_SWEEP),
)
SCRIPTS = (
    ("claim", CLAIM),
    ("release", RELEASE),
    ("renew", RENEW),
    ("seen", SEEN),
    ("lookup", LOOKUP),
    ("lease", LEASE),
    ("dead", DEAD),
    ("sweep", SWEEP),
)
