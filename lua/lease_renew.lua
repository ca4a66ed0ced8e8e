-- lease_renew: keep the chat's turn while a slow update is still being handled.
--
-- KEYS[1]  chat lease   <bot prefix>c:<chat>:lease
-- ARGV[1]  token of this attempt
-- ARGV[2]  new lease length in ms
--
-- Returns 1 if renewed, 0 if the lease is no longer ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
