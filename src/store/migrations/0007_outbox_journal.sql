-- What the outbox must deliver, kept where Postgres can rebuild Redis from it (Redis loses the
-- last second on a crash, everything when it comes back empty): every notice (a post for the
-- moderators to review, a verdict, the note after a confirmed post) until it was delivered, and
-- every broadcast recipient served. A reconciler re-queues what Redis lost, once.
CREATE TABLE notices (
    bot_id     bigint      NOT NULL,
    id         text        NOT NULL,
    chat_id    bigint      NOT NULL,
    text       text        NOT NULL,
    markup     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz,
    PRIMARY KEY (bot_id, id)
);
CREATE INDEX notices_unsent ON notices (bot_id, created_at) WHERE sent_at IS NULL;

CREATE TABLE broadcast_deliveries (
    broadcast_id bigint NOT NULL REFERENCES broadcasts (id) ON DELETE CASCADE,
    user_id      bigint NOT NULL,
    PRIMARY KEY (broadcast_id, user_id)
);
