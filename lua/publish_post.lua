-- publish_post: a published post goes out to the API nodes, once, atomically.
--
-- KEYS[1]  feed stream       <prefix>:feed:stream   capped stream; its entry ids are the offsets
-- KEYS[2]  page generation   <prefix>:feed:gen      bumped so every cached page is stale
-- KEYS[3]  published posts   <prefix>:feed:pub:<post id / 65536>   bitmap, bit ARGV[6]
-- KEYS[4]  newest post       <prefix>:feed:newest   the post a fresh replica must already have
-- ARGV[1]  channel           <prefix>:feed:live     PUBLISHed "<offset> <post JSON>"
-- ARGV[2]  the rendered post as JSON
-- ARGV[3]  how many entries the stream keeps (approximately)
-- ARGV[4]  how long to remember that the post went out, in ms (the bitmap lives that long
--          after its last post)
-- ARGV[5]  the post's id
-- ARGV[6]  the post's bit in KEYS[3] (post id mod 65536)
--
-- Returns the stream offset of the post, or false if it had already been published (a
-- redelivered update publishes nothing twice).
if redis.call('SETBIT', KEYS[3], ARGV[6], 1) == 1 then
  return false
end
redis.call('PEXPIRE', KEYS[3], ARGV[4])
local offset = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'post', ARGV[2])
redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[4], ARGV[5])
redis.call('PUBLISH', ARGV[1], offset .. ' ' .. ARGV[2])
return offset
