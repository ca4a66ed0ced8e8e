-- lease_renew: keep a lease one still holds: a chat's turn while a slow update is still being
-- handled, or the webhook watcher's role.
--
-- KEYS[1]  the lease    <chat slot>c:<chat>:lease, or <bot slot>webhook:watcher
-- ARGV[1]  the holder's token
-- ARGV[2]  new lease length in ms
--
-- Returns 1 if renewed, 0 if the lease is no longer ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
