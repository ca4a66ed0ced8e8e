//! An admin's broadcast: its text, stored once, and how far queueing its recipients got.

use deadpool_postgres::Pool;

use super::sql::{StoreError, query};
use crate::types::{BotId, ChatId, UpdateId, UserId};

/// Who a broadcast reaches among the bot's users: neither banned nor unreachable (refused by
/// Telegram for good, until they write again).
const RECIPIENT: &str = "NOT is_banned AND unreachable_at IS NULL";

/// An admin's broadcast, as it was recorded.
pub struct Broadcast {
    pub id: i64,
    pub status: String,
}

/// The broadcast of this update (`origin`, its identity): a new one, or the one its first
/// delivery started.
pub async fn start_broadcast(
    db: &Pool,
    bot_id: BotId,
    (update_id, origin): (UpdateId, &str),
    admin_chat: ChatId,
    (text, paid): (&str, bool),
) -> Result<Broadcast, StoreError> {
    let rows = query(
        db,
        "WITH started AS (
             INSERT INTO broadcasts (bot_id, update_id, origin, admin_chat, text, paid)
             VALUES ($1, $2, $5, $3, $4, $6)
             ON CONFLICT ON CONSTRAINT broadcasts_origin_once DO NOTHING
             RETURNING id, status
         )
         SELECT * FROM started
         UNION ALL
         SELECT id, status FROM broadcasts
         WHERE bot_id = $1 AND origin = $5 AND NOT EXISTS (SELECT 1 FROM started)",
        &[&bot_id, &update_id, &admin_chat, &text, &origin, &paid],
    )
    .await?;
    rows.first()
        .map(|row| Broadcast { id: row.get("id"), status: row.get("status") })
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("broadcast vanished")))
}

/// How many users a broadcast of the bot would reach now (its recipients are read as it goes:
/// those who join meanwhile are reached too).
pub async fn audience(db: &Pool, bot_id: BotId) -> Result<i64, StoreError> {
    let rows =
        query(db, &format!("SELECT count(*) FROM users WHERE bot_id = $1 AND {RECIPIENT}"), &[&bot_id])
            .await?;
    Ok(rows.first().map_or(0, |row| row.get(0)))
}

/// The next `limit` recipients of a broadcast after `after`: every user of the bot who is
/// neither banned nor unreachable, in user id order.
pub async fn recipients(
    db: &Pool,
    bot_id: BotId,
    after: UserId,
    limit: i64,
) -> Result<Vec<UserId>, StoreError> {
    let rows = query(
        db,
        &format!(
            "SELECT user_id FROM users WHERE bot_id = $1 AND user_id > $2 AND {RECIPIENT}
             ORDER BY user_id LIMIT $3"
        ),
        &[&bot_id, &after, &limit],
    )
    .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// A broadcast still going (queueing or sending) begun within the last day.
pub struct Going {
    pub id: i64,
    pub paid: bool,
    /// Recipients up to here are queued, as far as Postgres knows.
    pub next_user_id: UserId,
}

/// The bot's broadcasts still going that began within the last day (Redis keeps their queue
/// markers that long).
pub async fn going(db: &Pool, bot_id: BotId) -> Result<Vec<Going>, StoreError> {
    let rows = query(
        db,
        "SELECT id, paid, next_user_id FROM broadcasts
         WHERE bot_id = $1 AND status IN ('queueing', 'sending') AND created_at > now() - interval '23 hours'
         ORDER BY id",
        &[&bot_id],
    )
    .await?;
    Ok(rows.iter().map(|row| Going { id: row.get(0), paid: row.get(1), next_user_id: row.get(2) }).collect())
}

/// What a broadcast sends, which its outbox entries do not carry.
pub struct Content {
    pub text: String,
    /// Sent with Telegram's `allow_paid_broadcast`, at the bot's paid rate.
    pub paid: bool,
}

/// Broadcast `id`'s content; `None` if there is no such broadcast.
pub async fn content(db: &Pool, id: i64) -> Result<Option<Content>, StoreError> {
    let rows = query(db, "SELECT text, paid FROM broadcasts WHERE id = $1", &[&id]).await?;
    Ok(rows.first().map(|row| Content { text: row.get(0), paid: row.get(1) }))
}

/// The bot's broadcasts whose recipients are still being queued (not paused), oldest first.
pub async fn queueing(db: &Pool, bot_id: BotId) -> Result<Vec<Going>, StoreError> {
    let rows = query(
        db,
        "SELECT id, paid, next_user_id FROM broadcasts
         WHERE bot_id = $1 AND status = 'queueing' AND NOT paused ORDER BY id",
        &[&bot_id],
    )
    .await?;
    Ok(rows.iter().map(|row| Going { id: row.get(0), paid: row.get(1), next_user_id: row.get(2) }).collect())
}

/// Recipients of a broadcast after `after` and up to `through`, in user id order, that no sender
/// has served yet.
pub async fn unserved(
    db: &Pool,
    (bot_id, broadcast): (BotId, i64),
    (after, through): (UserId, UserId),
    limit: i64,
) -> Result<Vec<UserId>, StoreError> {
    let rows = query(
        db,
        &format!(
            "SELECT user_id FROM users u
             WHERE bot_id = $1 AND user_id > $3 AND user_id <= $4 AND {RECIPIENT}
               AND NOT EXISTS (SELECT 1 FROM broadcast_deliveries d WHERE d.broadcast_id = $2 AND d.user_id = u.user_id)
             ORDER BY user_id LIMIT $5"
        ),
        &[&bot_id, &broadcast, &after, &through, &limit],
    )
    .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Records that the recipients up to `next_user_id` are queued, `more` of them since the last
/// time (`done`: all of them).
pub async fn advance_broadcast(
    db: &Pool,
    id: i64,
    next_user_id: UserId,
    more: i32,
    done: bool,
) -> Result<(), StoreError> {
    query(
        db,
        "UPDATE broadcasts SET next_user_id = greatest(next_user_id, $2), queued = queued + $3,
                status = CASE WHEN $4 AND status = 'queueing' THEN 'sending' ELSE status END
         WHERE id = $1",
        &[&id, &next_user_id, &more, &done],
    )
    .await?;
    Ok(())
}

/// Cancels the admin's latest broadcast still going; returns its id.
pub async fn cancel_broadcast(
    db: &Pool,
    bot_id: BotId,
    admin_chat: ChatId,
) -> Result<Option<i64>, StoreError> {
    let rows = query(
        db,
        "UPDATE broadcasts SET status = 'cancelled'
         WHERE id = (SELECT id FROM broadcasts WHERE bot_id = $1 AND admin_chat = $2 AND status <> 'cancelled'
                     ORDER BY id DESC LIMIT 1)
         RETURNING id",
        &[&bot_id, &admin_chat],
    )
    .await?;
    Ok(rows.first().map(|row| row.get(0)))
}

/// Pauses (or resumes) the admin's latest broadcast still going that is not (or is) paused;
/// returns its id.
pub async fn pause_broadcast(
    db: &Pool,
    bot_id: BotId,
    admin_chat: ChatId,
    paused: bool,
) -> Result<Option<i64>, StoreError> {
    let rows = query(
        db,
        "UPDATE broadcasts SET paused = $3
         WHERE id = (SELECT id FROM broadcasts
                     WHERE bot_id = $1 AND admin_chat = $2 AND status IN ('queueing', 'sending') AND paused <> $3
                     ORDER BY id DESC LIMIT 1)
         RETURNING id",
        &[&bot_id, &admin_chat, &paused],
    )
    .await?;
    Ok(rows.first().map(|row| row.get(0)))
}
