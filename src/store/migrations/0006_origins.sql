-- Effects are keyed by what made them, not by update_id: Telegram may start update ids
-- anywhere after a week without updates, so a new message could collide with an old id. A
-- post's origin is its message ("m:<chat>:<message id>") or the button press that confirmed it
-- ("cb:<callback query id>"); a broadcast's is the admin's message; a decision's, the
-- moderator's press. Rows from before keep their update id as origin ("u:<update id>").
ALTER TABLE posts ADD COLUMN origin text;
UPDATE posts SET origin = CASE WHEN message_id IS NOT NULL THEN 'm:' || chat_id || ':' || message_id
                               ELSE 'u:' || update_id END;
ALTER TABLE posts ALTER COLUMN origin SET NOT NULL;
ALTER TABLE posts DROP CONSTRAINT posts_update_once;
ALTER TABLE posts ADD CONSTRAINT posts_origin_once UNIQUE (bot_id, origin);

ALTER TABLE posts ADD COLUMN decided_by text;
UPDATE posts SET decided_by = 'u:' || decided_update WHERE decided_update IS NOT NULL;
ALTER TABLE posts DROP COLUMN decided_update;

ALTER TABLE broadcasts ADD COLUMN origin text;
UPDATE broadcasts SET origin = 'u:' || update_id;
ALTER TABLE broadcasts ALTER COLUMN origin SET NOT NULL;
ALTER TABLE broadcasts DROP CONSTRAINT broadcasts_update_once;
ALTER TABLE broadcasts ADD CONSTRAINT broadcasts_origin_once UNIQUE (bot_id, origin);

-- A dead letter is the body that failed: an update id Telegram reused keeps a letter of its own.
DROP INDEX dead_letters_update_once;
CREATE UNIQUE INDEX dead_letters_body_once ON dead_letters (bot_id, update_id, md5(payload));
