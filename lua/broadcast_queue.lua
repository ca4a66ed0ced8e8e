-- broadcast_queue: queue a page of a broadcast's recipients together with the mark of how far
-- queueing got, provided the mark is still the one the caller read: a second feeder, or a
-- Redis that lost writes meanwhile, makes the call queue nothing. So a recipient is queued once,
-- and entries and mark survive or go together (an append-only file or a replica keeps a prefix
-- of the writes, and this call whole).
--
-- KEYS[1]  the outbox        <bot slot>outbox      a stream, read by the group "senders"
-- KEYS[2]  the progress      <bot slot>bc:<id>     HASH queued_through, queued, total, …
-- ARGV[1]  the broadcast's id
-- ARGV[2]  the mark the caller read ('' if none)
-- ARGV[3]  how long to keep the progress, in ms
-- ARGV[4]  '1' if these are the broadcast's last recipients: the count queued is its total
-- ARGV[5…] the recipients' user ids, ascending (each is its private chat's id; each entry's id
--          is bc:<broadcast>:<user>, as telegram::outbox::message_id makes it)
--
-- Returns how many recipients are queued in all, or false (nothing queued) if the mark moved.
if (redis.call('HGET', KEYS[2], 'queued_through') or '') ~= ARGV[2] then
  return false
end
local id = ARGV[1]
for i = 5, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'chat', ARGV[i], 'id', 'bc:' .. id .. ':' .. ARGV[i], 'broadcast', id)
end
if #ARGV >= 5 then
  redis.call('HSET', KEYS[2], 'queued_through', ARGV[#ARGV])
end
local queued = redis.call('HINCRBY', KEYS[2], 'queued', #ARGV - 4)
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], 'total', queued)
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return queued
