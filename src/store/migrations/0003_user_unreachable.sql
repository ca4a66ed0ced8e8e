-- When Telegram last refused a message to the user for good (they blocked the bot, deleted their
-- account, or the chat is gone): broadcasts skip them. A message from them clears it.
ALTER TABLE users ADD COLUMN unreachable_at timestamptz;
