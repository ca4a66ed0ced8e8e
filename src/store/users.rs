//! The bot's users: their profile, their ban, whether Telegram still delivers to them.

use deadpool_postgres::Pool;

use super::sql::{StoreError, query};
use crate::types::{BotId, UserId};

/// A user as Telegram describes them; the row is rewritten only when this changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub language_code: Option<String>,
}

/// Upserts the user only if the profile changed; returns whether they are banned.
pub async fn upsert_user(db: &Pool, bot_id: BotId, user_id: UserId, p: &Profile) -> Result<bool, StoreError> {
    let rows = query(
        db,
        "WITH changed AS (
             INSERT INTO users (bot_id, user_id, first_name, last_name, username, language_code)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (bot_id, user_id) DO UPDATE
             SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
                 username = EXCLUDED.username, language_code = EXCLUDED.language_code,
                 unreachable_at = NULL, updated_at = now()
             WHERE (users.first_name, users.last_name, users.username, users.language_code)
                   IS DISTINCT FROM
                   (EXCLUDED.first_name, EXCLUDED.last_name, EXCLUDED.username, EXCLUDED.language_code)
                OR users.unreachable_at IS NOT NULL
             RETURNING is_banned
         )
         SELECT is_banned FROM changed
         UNION ALL
         SELECT is_banned FROM users WHERE bot_id = $1 AND user_id = $2 AND NOT EXISTS (SELECT 1 FROM changed)",
        &[&bot_id, &user_id, &p.first_name, &p.last_name, &p.username, &p.language_code],
    )
    .await?;
    Ok(rows.first().is_some_and(|row| row.get(0)))
}

/// Sets a user's ban; returns false if the bot has never seen that user.
pub async fn set_banned(db: &Pool, bot_id: BotId, user_id: UserId, banned: bool) -> Result<bool, StoreError> {
    let rows = query(
        db,
        "UPDATE users SET is_banned = $3, updated_at = now() WHERE bot_id = $1 AND user_id = $2 RETURNING 1",
        &[&bot_id, &user_id, &banned],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// Telegram refused a message to the user for good: broadcasts skip them until they write again.
pub async fn mark_unreachable(db: &Pool, bot_id: BotId, user_id: UserId) -> Result<(), StoreError> {
    query(
        db,
        "UPDATE users SET unreachable_at = now() WHERE bot_id = $1 AND user_id = $2 AND unreachable_at IS NULL",
        &[&bot_id, &user_id],
    )
    .await?;
    Ok(())
}
