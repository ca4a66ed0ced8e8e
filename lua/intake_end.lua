-- intake_end: the attempt is over; record the outcome and hand the chat's turn on.
--
-- KEYS[1]  handled updates  <chat slot>hf:<update_id / 65536>   HASH of fingerprints
-- KEYS[2]  chat lease   <chat slot>c:<chat>:lease
-- KEYS[3]  chat queue   <chat slot>c:<chat>:q   (only its existence is read)
-- KEYS[4]  chat hold    <chat slot>c:<chat>:hold
-- ARGV[1]  token of this attempt
-- ARGV[2]  "done" (handled, or dead-lettered) or "retry" (failed; Telegram will redeliver)
-- ARGV[3]  how long to remember a handled update, in ms (Telegram retries for up to a day); the
--          hash lives that long after its last update
-- ARGV[4]  channel that wakes the chat's waiters
-- ARGV[5]  the chat's lease key, as the message on that channel
-- ARGV[6]  the update's field in KEYS[1] (update_id mod 65536)
-- ARGV[7]  the update's fingerprint (1..65535)
-- ARGV[8]  the update id
-- ARGV[9]  how long a failed update holds its chat's later updates back, in ms
--
-- An update holds its chat from its start (intake_begin) until it is handled or dead-lettered:
-- a failed one keeps holding it, and the chat's later updates wait ("held") for its
-- redelivery, so that a chat's updates take effect in update_id order even when one fails. The
-- hold expires after ARGV[9] ms, should Telegram never redeliver.
-- Returns 1 if this attempt still held the chat's turn, 0 if it had expired (another worker
-- may have taken over: the caller logs it). The waiters are woken only if there are any: a
-- waiter queues itself (intake_begin) before it sleeps, so none can be missed.
local hold = redis.call('GET', KEYS[4])
if ARGV[2] == 'done' then
  redis.call('HSET', KEYS[1], ARGV[6], ARGV[7])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  if hold == ARGV[8] then
    redis.call('DEL', KEYS[4])
  end
elseif not hold or tonumber(ARGV[8]) <= tonumber(hold) then
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[9])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('PUBLISH', ARGV[4], ARGV[5])
  end
  return 1
end
return 0
