-- The message that created a post, so that an edit of it can update a post still pending.
ALTER TABLE posts ADD COLUMN message_id bigint;
CREATE INDEX posts_by_message ON posts (bot_id, chat_id, message_id) WHERE status = 'pending';
