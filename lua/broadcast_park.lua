-- broadcast_park: a sender's entry of a paused broadcast leaves the outbox for the broadcast's
-- parked stream, where it waits for /broadcast_resume (broadcast_resume.lua), provided the
-- broadcast is still paused: a resume in between finds every parked entry, and this one is
-- sent.
--
-- KEYS[1]  the outbox        <bot slot>outbox            read by the group "senders"
-- KEYS[2]  the pause mark    <bot slot>bc:<id>:paused
-- KEYS[3]  the parked        <bot slot>bc:<id>:parked    a stream
-- ARGV[1]  the entry's id in the outbox
-- ARGV[2…] its fields and values
--
-- Returns 1 if parked, 0 if the broadcast is no longer paused (nothing changed).
if redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 2))
redis.call('XACK', KEYS[1], 'senders', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
