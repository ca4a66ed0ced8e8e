-- dialogue_save: compare-and-set of a chat's dialogue state, fenced by the chat's lease.
--
-- KEYS[1]  dialogue     <chat slot>d:<chat>   HASH v (version), s (state as JSON, "" when the
--                       dialogue ended), u (the update whose step it is), p (the state before it)
-- KEYS[2]  chat lease   <chat slot>c:<chat>:lease
-- ARGV[1]  the version the caller read ("0" when there was none)
-- ARGV[2]  the new state as JSON, or "" to end the dialogue
-- ARGV[3]  token of the caller's attempt, which must still hold the lease
-- ARGV[4]  time to live in ms: an abandoned dialogue expires
-- ARGV[5]  the update whose step this is
-- ARGV[6]  the state it started from, as JSON ("" for none)
--
-- Returns the new version, or -1 if the state changed since it was read or the lease is lost
-- (a writer whose turn expired must not overwrite the next one's state). An ended dialogue
-- stays (with state "") until it expires, so that its last step's redelivery can be recognised.
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return -1
end
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return -1
end
redis.call('HSET', KEYS[1], 'v', current + 1, 's', ARGV[2], 'u', ARGV[5], 'p', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return current + 1
