-- outbox_add: queue a message for the outbox's senders, once per message id.
--
-- KEYS[1]  the outbox        <bot slot>outbox              a stream, read by the group "senders"
-- KEYS[2]  the message's id  <bot slot>outbox:once:<id>    remembered for ARGV[1] ms
-- ARGV[1]  how long to remember the id, in ms (as long as a redelivery may come: a day)
-- ARGV[2]  the chat
-- ARGV[3]  the text, or '' for a broadcast's message (its text is stored once, in Postgres)
-- ARGV[4]  the inline keyboard as JSON, or ''
-- ARGV[5]  the broadcast the message belongs to, or ''
-- ARGV[6]  the message's id, kept in the entry (its sender records it delivered in Postgres)
--
-- Returns the entry's id, or false if a message with this id was queued before (a redelivered
-- update, or a second click on the same button, queues nothing twice).
if not redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[1]) then
  return false
end
local fields = { 'chat', ARGV[2], 'id', ARGV[6] }
if ARGV[3] ~= '' then
  table.insert(fields, 'text')
  table.insert(fields, ARGV[3])
end
if ARGV[4] ~= '' then
  table.insert(fields, 'markup')
  table.insert(fields, ARGV[4])
end
if ARGV[5] ~= '' then
  table.insert(fields, 'broadcast')
  table.insert(fields, ARGV[5])
end
return redis.call('XADD', KEYS[1], '*', unpack(fields))
