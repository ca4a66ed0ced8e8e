-- An admin's /broadcast: its recipients are queued in the outbox page by page, in user_id order;
-- next_user_id is where queueing resumes when the admin's update is redelivered after a crash.
CREATE TABLE broadcasts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id bigint NOT NULL,
    update_id bigint NOT NULL,
    admin_chat bigint NOT NULL,
    text text NOT NULL,
    status text NOT NULL DEFAULT 'queueing' CHECK (status IN ('queueing', 'sending', 'cancelled')),
    next_user_id bigint NOT NULL DEFAULT 0,
    queued integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT broadcasts_update_once UNIQUE (bot_id, update_id)
);
