-- publish_post: published posts go out to the API nodes, each once, atomically. Workers send
-- the posts that committed together in one call.
--
-- KEYS[1]    feed stream       <prefix>:feed:stream   capped stream; its entry ids are the offsets
-- KEYS[2]    page generation   <prefix>:feed:gen      bumped so every cached page is stale
-- KEYS[3]    newest post       <prefix>:feed:newest   the post a fresh replica must already have:
--                                                      the highest id published, whatever order
--                                                      the posts of a call or of two workers come in
-- KEYS[3+i]  published posts   <prefix>:feed:pub:<post id / 65536>   bitmap of the i-th post
-- ARGV[1]    channel           <prefix>:feed:live     PUBLISHed "<offset> <post JSON>"
-- ARGV[2]    how many entries the stream keeps (approximately)
-- ARGV[3]    how long to remember that a post went out, in ms (a bitmap lives that long after
--            its last post)
-- ARGV[1+3i] the i-th post rendered as JSON
-- ARGV[2+3i] the i-th post's id
-- ARGV[3+3i] the i-th post's bit in KEYS[3+i] (post id mod 65536)
--
-- Returns, for each post in order, its stream offset, or false if it had already been published
-- (a redelivered update publishes nothing twice).
local offsets = {}
local newest = nil
for i = 1, #KEYS - 3 do
  local json, id, bit = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if redis.call('SETBIT', KEYS[3 + i], bit, 1) == 1 then
    offsets[i] = false
  else
    redis.call('PEXPIRE', KEYS[3 + i], ARGV[3])
    local offset = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'post', json)
    redis.call('PUBLISH', ARGV[1], offset .. ' ' .. json)
    offsets[i] = offset
    newest = math.max(newest or 0, tonumber(id))
  end
end
if newest then
  redis.call('INCR', KEYS[2])
  if newest > tonumber(redis.call('GET', KEYS[3]) or '0') then
    redis.call('SET', KEYS[3], newest)
  end
end
return offsets
