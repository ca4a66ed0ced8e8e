-- Users of each bot, as Telegram last described them. The worker keeps this row current
-- (upsert only when the profile changed); a ban hides the user's posts from the feed.
CREATE TABLE users (
    bot_id        bigint      NOT NULL,
    user_id       bigint      NOT NULL,
    first_name    text        NOT NULL DEFAULT '',
    last_name     text,
    username      text,
    language_code text,
    is_banned     boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bot_id, user_id)
);

-- Posts: pending -> approved -> published, or rejected. update_id is the update that created
-- the post; the unique constraint is what keeps a redelivered update from creating a second
-- post even when Redis has forgotten it.
CREATE TABLE posts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id          bigint      NOT NULL,
    author_id       bigint      NOT NULL,
    chat_id         bigint      NOT NULL,
    update_id       bigint      NOT NULL,
    text            text        NOT NULL,
    media_file_id   text,
    media_unique_id text,
    status          text        NOT NULL DEFAULT 'published'
                    CHECK (status IN ('pending', 'approved', 'published', 'rejected')),
    is_public       boolean     NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    CONSTRAINT posts_update_once UNIQUE (bot_id, update_id),
    CONSTRAINT posts_author FOREIGN KEY (bot_id, author_id) REFERENCES users (bot_id, user_id),
    CONSTRAINT posts_published_has_time CHECK (status <> 'published' OR published_at IS NOT NULL)
);

-- The public feed, newest first, walked by keyset (published_at, id).
CREATE INDEX posts_public_feed ON posts (published_at DESC, id DESC)
    WHERE status = 'published' AND is_public;
CREATE INDEX posts_by_author ON posts (bot_id, author_id, id DESC);

-- Updates that kept failing, kept whole so that nothing is dropped silently.
CREATE TABLE dead_letters (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id     bigint      NOT NULL,
    update_id  bigint,
    payload    text        NOT NULL,
    error      text        NOT NULL,
    attempts   integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX dead_letters_update_once ON dead_letters (bot_id, update_id);
