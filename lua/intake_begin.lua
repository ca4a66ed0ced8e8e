-- intake_begin: may this worker handle this update now? One round trip for the dedup fast
-- path and the per-chat turn (invariants 2 and 3).
--
-- KEYS[1]  update key        <bot prefix>u:<update_id>   "done" once handled
-- KEYS[2]  chat lease        <bot prefix>c:<chat>:lease  holder's token, expires after ARGV[3] ms
-- KEYS[3]  chat queue        <bot prefix>c:<chat>:q      ZSET of waiting update ids (score = id)
-- KEYS[4]  waiter deadlines  <bot prefix>c:<chat>:w      HASH update id -> ms until the waiter counts
-- ARGV[1]  update id
-- ARGV[2]  token of this attempt (unique per delivery)
-- ARGV[3]  lease length in ms
-- ARGV[4]  how long a waiter stays queued without asking again, in ms
--
-- Returns "done" (already handled: acknowledge), "go" (the chat's turn is ours) or "wait".
-- Waiters ask again until they get their turn; the lowest waiting update id goes first, and a
-- waiter that stopped asking (its worker died) is dropped once its deadline passes.
if redis.call('GET', KEYS[1]) == 'done' then
  return 'done'
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = ARGV[1]
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[2] then
  return 'go'
end
redis.call('ZADD', KEYS[3], id, id)
redis.call('HSET', KEYS[4], id, now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[3], ARGV[4] * 4)
redis.call('PEXPIRE', KEYS[4], ARGV[4] * 4)
while true do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head == nil or head == id then break end
  local deadline = tonumber(redis.call('HGET', KEYS[4], head) or '0')
  if deadline >= now then break end
  redis.call('ZREM', KEYS[3], head)
  redis.call('HDEL', KEYS[4], head)
end
if holder then
  return 'wait'
end
if redis.call('ZRANGE', KEYS[3], 0, 0)[1] ~= id then
  return 'wait'
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[4], id)
return 'go'
