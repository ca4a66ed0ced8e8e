-- intake_begin: may this worker handle this update now? One round trip for the dedup fast
-- path, the per-chat turn and order (invariants 2 and 3), and the first reads of the handler.
--
-- KEYS[1]  handled updates   <chat slot>hf:<update_id / 65536>   HASH update_id mod 65536 ->
--                            the fingerprint of what the update was, once handled
-- KEYS[2]  chat lease        <chat slot>c:<chat>:lease  holder's token, expires after ARGV[3] ms
-- KEYS[3]  chat queue        <chat slot>c:<chat>:q      ZSET of waiting update ids (score = id)
-- KEYS[4]  waiter deadlines  <chat slot>c:<chat>:w      HASH update id -> ms until the waiter counts
-- KEYS[5]  chat hold         <chat slot>c:<chat>:hold   the chat's update under way or failed,
--                            which must be handled (or dead-lettered) before any later one
-- KEYS[6]  optional, with KEYS[7]: cached user  <chat slot>user:<id>  read with the turn
-- KEYS[7]  optional, with KEYS[6]: dialogue     <chat slot>d:<chat>   HASH v, s, u, p
--          (<chat slot> is the chat's hash tag: every key here is in one slot of a Redis Cluster)
-- ARGV[1]  update id
-- ARGV[2]  token of this attempt (unique per delivery)
-- ARGV[3]  lease length in ms
-- ARGV[4]  how long a waiter stays queued without asking again, in ms
-- ARGV[5]  the update's field in KEYS[1] (update_id mod 65536)
-- ARGV[6]  the update's fingerprint (1..65535): a hash of what it is, not of its id
-- ARGV[7]  how long the hold lasts, in ms, should the update never come back
--
-- Returns {"done"} (already handled: acknowledge), {"held", id} (an earlier update of the chat
-- failed, or its worker died or stalled, and it waits for its redelivery), {"wait"}, or {"go"} when the chat's turn is ours, or
-- {"reused"} likewise when the id was handled before as another update (Telegram may reuse
-- ids after a week of silence), followed by the user and the dialogue's fields v, s, u, p when
-- KEYS[6..7] are given (nil where absent): read under the turn, they stay current until it
-- ends, since only the turn's holder writes the chat's dialogue.
-- Waiters ask again until they get their turn; the lowest waiting update id goes first, and a
-- waiter that stopped asking (its worker died) is dropped once its deadline passes.
local seen = redis.call('HGET', KEYS[1], ARGV[5])
if seen == ARGV[6] then
  return {'done'}
end
local verdict = 'go'
if seen then
  verdict = 'reused'
end
local hold = redis.call('GET', KEYS[5])
local function go()
  -- The update holds its chat until it ends (intake_end): if its worker dies or stalls past the
  -- lease, the chat's later updates still wait for its redelivery.
  if not hold then
    redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[7])
  end
  if not KEYS[6] then
    return {verdict}
  end
  local dialogue = redis.call('HMGET', KEYS[7], 'v', 's', 'u', 'p')
  return {verdict, redis.call('GET', KEYS[6]), dialogue[1], dialogue[2], dialogue[3], dialogue[4]}
end

local id = ARGV[1]
local holder = redis.call('GET', KEYS[2])
if holder == ARGV[2] then
  return go()
end
-- An earlier update holds the chat and nobody works on it: it failed, or its worker died.
if hold and not holder and tonumber(hold) < tonumber(id) then
  return {'held', hold}
end
-- The usual case: nobody holds the chat and nobody waits for it.
if not holder and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  return go()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
  return {'wait'}
end
if redis.call('ZRANGE', KEYS[3], 0, 0)[1] ~= id then
  return {'wait'}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZREM', KEYS[3], id)
redis.call('HDEL', KEYS[4], id)
return go()
