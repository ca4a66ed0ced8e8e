-- publish_post: published posts go out to the API nodes, each once, atomically. Workers send
-- the posts that committed together in one call.
--
-- KEYS[1]    feed stream       <prefix>:{feed}:stream   capped stream; its entry ids are the offsets
-- KEYS[2]    page generation   <prefix>:{feed}:gen      moved on so every cached page is stale
-- KEYS[3]    WAL position      <prefix>:{feed}:lsn      what a replica must have replayed to be read:
--                                                      the highest position published, whatever
--                                                      order calls of two workers come in
-- KEYS[3+i]  published posts   <prefix>:{feed}:pub:<post id / 65536>   bitmap of the i-th post
-- ARGV[1]    channel           <prefix>:feed:live     PUBLISHed "<offset> <post JSON>"
-- ARGV[2]    how many entries the stream keeps (approximately)
-- ARGV[3]    how long to remember that a post went out, in ms (a bitmap lives that long after
--            its last post)
-- ARGV[4]    the primary's WAL position after these posts committed, in bytes
-- ARGV[2+3i] the i-th post rendered as JSON
-- ARGV[3+3i] the i-th post's id, kept beside it in the stream (a resumed stream checks it)
-- ARGV[4+3i] the i-th post's bit in KEYS[3+i] (post id mod 65536)
--
-- Returns, for each post in order, its stream offset, or false if it had already been published
-- (a redelivered update publishes nothing twice).
local offsets = {}
local published = false
for i = 1, #KEYS - 3 do
  local json, bit = ARGV[2 + 3 * i], ARGV[4 + 3 * i]
  if redis.call('SETBIT', KEYS[3 + i], bit, 1) == 1 then
    offsets[i] = false
  else
    redis.call('PEXPIRE', KEYS[3 + i], ARGV[3])
    local offset = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'post', json, 'id', ARGV[3 + 3 * i])
    redis.call('PUBLISH', ARGV[1], offset .. ' ' .. json)
    offsets[i] = offset
    published = true
  end
end
if published then
  -- The next version, or the time in microseconds if higher (feed_state.lua says why).
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local generation = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now)
  redis.call('SET', KEYS[2], string.format('%d', generation))
  if tonumber(ARGV[4]) > tonumber(redis.call('GET', KEYS[3]) or '0') then
    redis.call('SET', KEYS[3], ARGV[4])
  end
end
return offsets
