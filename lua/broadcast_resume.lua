-- broadcast_resume: a paused broadcast goes on: its mark is gone and its parked entries are
-- queued again in the outbox, in one step (broadcast_park.lua parks only while the mark is
-- there, so none is left behind).
--
-- KEYS[1]  the outbox        <bot slot>outbox
-- KEYS[2]  the pause mark    <bot slot>bc:<id>:paused
-- KEYS[3]  the parked        <bot slot>bc:<id>:parked    at most the feeder's window
--
-- Returns how many entries went back to the outbox.
redis.call('DEL', KEYS[2])
local parked = redis.call('XRANGE', KEYS[3], '-', '+')
for _, entry in ipairs(parked) do
  redis.call('XADD', KEYS[1], '*', unpack(entry[2]))
end
redis.call('DEL', KEYS[3])
return #parked
