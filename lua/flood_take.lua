-- flood_take: reserve the moment at which a message of the bot to a chat may go out, within
-- Telegram's limits, over the whole cluster (invariant 8).
--
-- Each limit is a schedule: its key holds the earliest time, in µs of Redis' clock, at which
-- the next message may go. A reservation takes the first moment that every schedule and the
-- bot's pause allow, and moves each schedule on by its interval from there. Messages spaced so
-- are never more than N in any window of N intervals, however many workers send.
--
-- KEYS[1]  the bot's schedule     <bot slot>flood:bot
-- KEYS[2]  the chat's schedule    <bot slot>flood:c:<chat>
-- KEYS[3]  the bot's pause        <bot slot>flood:pause   set for retry_after after a 429
-- ARGV[1]  the bot's interval in µs (1e6 / messages per second)
-- ARGV[2]  the chat's interval in µs (1e6 for a private chat, 3e6 for a group: 20 a minute)
-- ARGV[3]  the longest wait the caller accepts, in ms
--
-- Returns the ms to wait before sending (0: now), the moment reserved; or, if that would be
-- longer than ARGV[3], minus that wait, and nothing is reserved.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local at = now
local pause = redis.call('PTTL', KEYS[3])
if pause > 0 then
  at = now + pause * 1000
end
for i = 1, 2 do
  local next = tonumber(redis.call('GET', KEYS[i]) or '0')
  if next > at then
    at = next
  end
end
local wait = math.ceil((at - now) / 1000)
if wait > tonumber(ARGV[3]) then
  return -wait
end
for i = 1, 2 do
  local interval = tonumber(ARGV[i])
  -- Kept a little longer than it matters, then gone: idle chats leave nothing behind.
  redis.call('SET', KEYS[i], string.format('%d', at + interval), 'PX', wait + math.ceil(interval / 1000) + 1000)
end
return wait
