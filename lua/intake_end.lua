-- intake_end: the attempt is over; record the outcome and hand the chat's turn on.
--
-- KEYS[1]  update key   <bot prefix>u:<update_id>
-- KEYS[2]  chat lease   <bot prefix>c:<chat>:lease
-- ARGV[1]  token of this attempt
-- ARGV[2]  "done" (handled, or dead-lettered) or "retry" (failed; Telegram will redeliver)
-- ARGV[3]  how long to remember a handled update, in ms (Telegram retries for up to a day)
-- ARGV[4]  channel that wakes the chat's waiters
-- ARGV[5]  the chat's lease key, as the message on that channel
--
-- Returns 1 if this attempt still held the chat's turn, 0 if it had expired (another worker
-- may have taken over: the caller logs it).
if ARGV[2] == 'done' then
  redis.call('SET', KEYS[1], 'done', 'PX', ARGV[3])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0
