-- feed_state: what the API needs to know about the feed now: its two versions and the WAL
-- position replicas must have replayed. Versions never go back, even when Redis does.
--
-- KEYS[1]  page generation   <prefix>:{feed}:gen
-- KEYS[2]  removals          <prefix>:{feed}:removals
-- KEYS[3]  WAL position      <prefix>:{feed}:lsn
-- ARGV[1]  the highest generation the asking process has seen
-- ARGV[2]  the highest removal count it has seen
--
-- Returns {generation, removals, position or false}. Cached pages are keyed by version, so a
-- version that came back after Redis lost it (restarted empty, or failed over to a replica that
-- missed the last second) would make pages cached before valid again. So a version that is
-- missing, or below one the caller saw, moves to the time in microseconds (or past what the
-- caller saw): above every version handed out before, since versions move by one per change and
-- time by a million a second. A position that went back with them is no longer what replicas
-- must have replayed, and is dropped: until the next publish or removal sets it, pages are read
-- from the primary (as they are while it is missing).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lost = false
local function version(key, seen)
  local value = tonumber(redis.call('GET', key) or '-1')
  if value < tonumber(seen) then
    value = math.max(now, tonumber(seen) + 1)
    redis.call('SET', key, string.format('%d', value))
    -- Missing before anyone saw it is a new deployment, or a loss of everything (the position
    -- with it).
    lost = lost or tonumber(seen) > 0
  end
  return value
end
local generation = version(KEYS[1], ARGV[1])
local removals = version(KEYS[2], ARGV[2])
if lost then
  redis.call('DEL', KEYS[3])
end
return {generation, removals, redis.call('GET', KEYS[3])}
