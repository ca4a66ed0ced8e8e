-- feed_removed: posts left the feed (a post deleted, an author banned or unbanned).
--
-- KEYS[1]  page generation   <prefix>:{feed}:gen        every cached page is stale
-- KEYS[2]  removals          <prefix>:{feed}:removals   pages after a cursor are stale too
-- KEYS[3]  removal position  <prefix>:{feed}:lsn        WAL position a replica must have replayed
-- ARGV[1]  the primary's WAL position after the removal committed, in bytes
--
-- Returns the new generation. The position only moves forward, whatever order concurrent
-- removals arrive in. A version moves to the next one or to the time in microseconds, whichever
-- is higher (feed_state.lua says why).
local current = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[3], ARGV[1])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local removals = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now)
local generation = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, now)
redis.call('SET', KEYS[2], string.format('%d', removals))
redis.call('SET', KEYS[1], string.format('%d', generation))
return generation
