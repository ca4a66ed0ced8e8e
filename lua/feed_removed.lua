-- feed_removed: posts left the feed (a post deleted, an author banned or unbanned).
--
-- KEYS[1]  page generation   <prefix>:feed:gen        every cached page is stale
-- KEYS[2]  removals          <prefix>:feed:removals   pages after a cursor are stale too
-- KEYS[3]  removal position  <prefix>:feed:lsn        WAL position a replica must have replayed
-- ARGV[1]  the primary's WAL position after the removal committed, in bytes
--
-- Returns the new generation. The position only moves forward, whatever order concurrent
-- removals arrive in.
local current = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('INCR', KEYS[2])
return redis.call('INCR', KEYS[1])
