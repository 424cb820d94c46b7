"""The Lua scripts the Redis cluster layer runs (relay/cluster/redis.py): each changes a
device's presence and the sorted device index together, atomically."""

from __future__ import annotations

# KEYS device hash, index; ARGV id, node, session, connected_at, last_seen, ttl ms.
# The last writer wins and learns who held the device before.
CLAIM = """
local prev = redis.call('HMGET', KEYS[1], 'node', 'session_id')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'session_id', ARGV[3],
           'connected_at', ARGV[4], 'last_seen', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return {prev[1] or '', prev[2] or ''}"""
# KEYS device hash, index; ARGV id, session.
RELEASE = """
if redis.call('HGET', KEYS[1], 'session_id') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return redis.call('ZREM', KEYS[2], ARGV[1])"""
# KEYS index, one hash per device; ARGV node, ttl ms, rebuild flag, then per device id,
# session, connected_at, last_seen. Per device: status, holder node, holder session, with
# status 0 renewed, 1 claimed (absent, ours, or older than ours when rebuilding), 2 lost.
RENEW = """
local out = {}
for i = 2, #KEYS do
  local a = 4 + (i - 2) * 4
  local cur = redis.call('HMGET', KEYS[i], 'node', 'session_id', 'connected_at')
  local status = 2
  if cur[1] == ARGV[1] and cur[2] == ARGV[a + 1] then
    status = 0
    redis.call('HSET', KEYS[i], 'last_seen', ARGV[a + 3])
  elseif (not cur[1]) or cur[1] == ARGV[1]
      or (ARGV[3] == '1' and (tonumber(cur[3]) or 0) < tonumber(ARGV[a + 2])) then
    status = 1
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[i], 'node', ARGV[1], 'session_id', ARGV[a + 1],
               'connected_at', ARGV[a + 2], 'last_seen', ARGV[a + 3])
  end
  if status < 2 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('ZADD', KEYS[1], 0, ARGV[a])
  end
  table.insert(out, status)
  table.insert(out, cur[1] or '')
  table.insert(out, cur[2] or '')
end
return out"""
# KEYS device hashes then the index; ARGV the ids. Drops members whose hash expired.
PRUNE = """
for i, id in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('ZREM', KEYS[#KEYS], id) end
end
return 0"""
SCRIPTS = (("claim", CLAIM), ("release", RELEASE), ("renew", RENEW), ("prune", PRUNE))
