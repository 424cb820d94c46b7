"""The Lua scripts the Redis cluster layer runs (relay/cluster/redis.py): each reads or
changes devices' presence in the sorted device index, atomically.

A device's record lives in the index itself, as its one member: the id, a NUL, then lease,
connected_at, last_seen, session and node, one per line (relay.cluster.redis_client:
join_record), all scored 0, so ZRANGEBYLEX orders members by id, finds a device's member
between `[<id>\\0` and `(<id>\\1`, and a listing page reads the records with the ids. A
record changes by ZREM of the old member and ZADD of the new, in one script. It names its
node and the node's lease (a token, new each time the node process starts); the record
counts only while `lease:{node}` holds that token, so a dead or restarted node's devices
vanish from every lookup at once. The first scripts read `lease:{node}` for the node a
record names, a key they compute: one Redis; the `S_` ones below are their Redis Cluster
forms, with the leases read by the client."""

from __future__ import annotations

# Functions every script that reads or writes records starts with: `nul` is where a
# member's record starts (after its last NUL: an id may hold one, a record not; nil when
# there is none: the bare id an older relay's index holds), `id_of` a member's id, `parse`
# splits a member (nil when it is not a record), `pack` joins one (node last: the only
# free-form field); `find` is the record of device `id` in index `k` (nil when absent);
# `index` adds (ZADD) or removes members, a thousand to a command; `us` reads a record's
# connected_at (microseconds, base 36). Plain finds, not a pattern that backtracks: a
# claim splits every member it adds.
_REC = """
local function nul(m)
  local at = string.find(m, '\\0', 1, true)
  while at do
    local later = string.find(m, '\\0', at + 1, true)
    if not later then return at end
    at = later
  end
  return nil
end
local function id_of(m) return string.sub(m, 1, nul(m) - 1) end
local function parse(m)
  local at = nul(m)
  if not at then return nil end
  local lease, ca, ls, session, node = string.match(m,
    '^([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n([^\\n]*)\\n(.*)$', at + 1)
  if not lease then return nil end
  return {id = string.sub(m, 1, at - 1), member = m, node = node, session = session,
          connected_at = ca, last_seen = ls, lease = lease}
end
local function pack(id, lease, ca, ls, session, node)
  return id .. '\\0' .. lease .. '\\n' .. ca .. '\\n' .. ls .. '\\n' .. session .. '\\n' .. node
end
local function find(k, id)
  for _, m in ipairs(redis.call('ZRANGEBYLEX', k, '[' .. id .. '\\0', '(' .. id .. '\\1')) do
    local rec = parse(m)
    if rec and rec.id == id then return rec end
  end
  return nil
end
local function index(op, members)
  for i = 1, #members, 1000 do
    local args = {}
    for j = i, math.min(i + 999, #members) do
      if op == 'ZADD' then table.insert(args, 0) end
      table.insert(args, members[j])
    end
    redis.call(op, KEYS[1], unpack(args))
  end
end
local function us(stamp) return tonumber(stamp, 36) or 0 end
"""

# A function every script that judges a record on one Redis starts with: whether `node`
# still holds `lease`. `seen` caches answers per script call.
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
# `walk` reads the next `count` members of the index from `start` (ZRANGEBYLEX form) and
# removes those that are not records (an older relay's bare ids, with their record: `head`
# and the id) and those whose holder `dead` says is gone; the members read, the records kept.
_WALK = """
local function walk(start, count, head, dead)
  local members = redis.call('ZRANGEBYLEX', KEYS[1], start, '+', 'LIMIT', 0, count)
  local kept = {}
  for _, m in ipairs(members) do
    local rec = parse(m)
    if not rec then
      redis.call('ZREM', KEYS[1], m)
      redis.call('DEL', head .. m)
    elseif dead(rec) then
      redis.call('ZREM', KEYS[1], m)
    else
      table.insert(kept, rec)
    end
  end
  return members, kept
end
"""

# Claims and releases come in batches (relay.cluster.redis_presence), one script call per
# batch: KEYS the index (a bucket's, on a cluster), ARGV node, prefix, then per device its
# member (packed by the client). The last writer wins and learns who held the device before
# when that was another node and `held` says the holder counts: per such device its position
# in the batch (from 1), the holder's node and session.
_CLAIM_MANY = """
local out, add, at, seen = {}, {}, {}, {}
for i = 3, #ARGV do
  local id = id_of(ARGV[i])
  local prev = find(KEYS[1], id)
  if prev then redis.call('ZREM', KEYS[1], prev.member) end
  if at[id] then add[at[id]] = ARGV[i] else
    table.insert(add, ARGV[i])
    at[id] = #add
  end
  if prev and prev.node ~= ARGV[1] and held(prev, seen) then
    table.insert(out, i - 2)
    table.insert(out, prev.node)
    table.insert(out, prev.session)
  end
end
index('ZADD', add)
return out"""
# One Redis: a previous holder counts while its lease lives.
CLAIM = (
    _REC
    + _LIVE
    + """
local function held(prev, seen) return live(ARGV[2], prev.node, prev.lease, seen) end"""
    + _CLAIM_MANY
)
# KEYS the index; ARGV per device its id and the session it releases. A record leaves the
# index only if that session still holds it. How many were released.
RELEASE = (
    _REC
    + """
local gone = {}
for i = 1, #ARGV, 2 do
  local rec = find(KEYS[1], ARGV[i])
  if rec and rec.session == ARGV[i + 1] then table.insert(gone, rec.member) end
end
index('ZREM', gone)
return #gone"""
)
# KEYS the index; ARGV node, lease, then (from `first`) per device its member as this node
# would claim it. Per device: status, holder node, holder session, with status 0 kept
# (already ours, the lease brought up to date), 1 claimed (absent, held by a node whose
# lease is gone (`alive`), by this node before, or by an older connection), 2 lost to a
# newer. Starts with `first` and `alive` (one Redis, or a cluster).
_RENEW = """
local out = {}
for i = first, #ARGV do
  local new = parse(ARGV[i])
  local cur = find(KEYS[1], new.id)
  local status = 2
  if cur and cur.node == ARGV[1] and cur.session == new.session then
    status = 0
    if cur.lease ~= ARGV[2] then
      redis.call('ZREM', KEYS[1], cur.member)
      redis.call('ZADD', KEYS[1], 0, pack(cur.id, ARGV[2], cur.connected_at, cur.last_seen,
                                         cur.session, cur.node))
    end
  elseif (not cur) or cur.node == ARGV[1] or not alive(cur)
      or us(cur.connected_at) < us(new.connected_at) then
    status = 1
    if cur then redis.call('ZREM', KEYS[1], cur.member) end
    redis.call('ZADD', KEYS[1], 0, ARGV[i])
  end
  cur = cur or {}
  table.insert(out, status)
  table.insert(out, cur.node or '')
  table.insert(out, cur.session or '')
end
return out"""
# ARGV node, lease, prefix, then the members.
RENEW = (
    _REC
    + _LIVE
    + """
local first, seen = 4, {}
local function alive(rec) return live(ARGV[3], rec.node, rec.lease, seen) end"""
    + _RENEW
)
# KEYS the index; ARGV per device id, session, last_seen (milliseconds after connected_at,
# base 36: relay.cluster.redis_client.since). Written only while that session still holds
# the device.
SEEN = (
    _REC
    + """
for i = 1, #ARGV, 3 do
  local rec = find(KEYS[1], ARGV[i])
  if rec and rec.session == ARGV[i + 1] and rec.last_seen ~= ARGV[i + 2] then
    redis.call('ZREM', KEYS[1], rec.member)
    redis.call('ZADD', KEYS[1], 0, pack(rec.id, rec.lease, rec.connected_at, ARGV[i + 2],
                                       rec.session, rec.node))
  end
end
return 0"""
)
# KEYS the index; ARGV prefix, then the ids. Per device its row (node, session,
# connected_at, last_seen) while its node's lease lives, else an empty row.
LOOKUP = (
    _REC
    + _LIVE
    + """
local out, seen = {}, {}
for i = 2, #ARGV do
  local rec = find(KEYS[1], ARGV[i])
  if rec and live(ARGV[1], rec.node, rec.lease, seen) then
    table.insert(out, {rec.node, rec.session, rec.connected_at, rec.last_seen})
  else
    table.insert(out, {})
  end
end
return out"""
)
# KEYS the index; ARGV prefix, start (ZRANGEBYLEX form), count. A listing page: the last
# member read ('' for none), how many were read, then a row (id, node, session,
# connected_at, last_seen) per live record; members dead or not records are removed.
LIST = (
    _REC
    + _LIVE
    + _WALK
    + """
local seen = {}
local function dead(rec) return not live(ARGV[1], rec.node, rec.lease, seen) end
local members, kept = walk(ARGV[2], ARGV[3], ARGV[1] .. 'dev:', dead)
local out = {members[#members] or '', #members}
for _, rec in ipairs(kept) do
  table.insert(out, {rec.id, rec.node, rec.session, rec.connected_at, rec.last_seen})
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
# KEYS the index; ARGV an older relay's record key head, start (ZRANGEBYLEX form), count,
# then what `dead` reads. Removes the next `count` members whose holder is gone; returns
# the last member seen ('' at the end). Starts with `dead`.
_SWEEP = (
    _REC
    + _WALK
    + """
local members = walk(ARGV[2], ARGV[3], ARGV[1], dead)
if #members < tonumber(ARGV[3]) then return '' end
return members[#members]"""
)
# One Redis: ARGV[4] the prefix, for the leases.
SWEEP = (
    _LIVE
    + """
local seen = {}
local function dead(rec) return not live(ARGV[4], rec.node, rec.lease, seen) end"""
    + _SWEEP
)

# Redis Cluster (relay.cluster.redis_sharded): a script touches one slot, the bucket of its
# devices (`{prefix}{b<n>}:presence`), so leases (each in its node's slot) are read by the
# client, not inside the scripts.

# As CLAIM, in one bucket; a claim reports the previous holder whatever its lease (the
# client tells that node to close its connection, which it does only if that session is
# still open there: a dead holder's inbox has no listener).
S_CLAIM = (
    _REC
    + """
local function held() return true end"""
    + _CLAIM_MANY
)
# ARGV node, lease, n, then n live holders ("node\\nlease", read by the client just before),
# then the members. As RENEW, with a holder live only if it is in that list.
S_RENEW = (
    _REC
    + """
local holders, n = {}, tonumber(ARGV[3])
for i = 4, 3 + n do holders[ARGV[i]] = true end
local first = 4 + n
local function alive(rec) return holders[rec.node .. '\\n' .. rec.lease] end"""
    + _RENEW
)
# As SWEEP, in one bucket, with ARGV[4..] the dead holders ("node\\nlease").
S_SWEEP = (
    """
local gone = {}
for i = 4, #ARGV do gone[ARGV[i]] = true end
local function dead(rec) return gone[rec.node .. '\\n' .. rec.lease] end"""
    + _SWEEP
)
SHARDED_SCRIPTS = (
    ("claim", S_CLAIM),
    ("release", RELEASE),
    ("renew", S_RENEW),
    ("seen", SEEN),
    ("sweep", S_SWEEP),
)
SCRIPTS = (
    ("claim", CLAIM),
    ("release", RELEASE),
    ("renew", RENEW),
    ("seen", SEEN),
    ("lookup", LOOKUP),
    ("list", LIST),
    ("lease", LEASE),
    ("dead", DEAD),
    ("sweep", SWEEP),
)
