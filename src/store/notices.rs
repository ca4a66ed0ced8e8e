//! The outbox's journal in Postgres: each notice until it was delivered, and each broadcast
//! recipient served, so that what Redis lost can be queued again (`telegram::outbox::rebuild`).

use deadpool_postgres::Pool;

use super::sql::{StoreError, query};
use crate::types::{BotId, ChatId, UserId};

/// A notice as the outbox queues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub id: String,
    pub chat: ChatId,
    pub text: String,
    /// The inline keyboard as JSON.
    pub markup: Option<String>,
}

/// Journals a notice before it is queued; a second journal of one id changes nothing.
pub async fn record(db: &Pool, bot_id: BotId, notice: &Notice) -> Result<(), StoreError> {
    query(
        db,
        "INSERT INTO notices (bot_id, id, chat_id, text, markup) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (bot_id, id) DO NOTHING",
        &[&bot_id, &notice.id, &notice.chat, &notice.text, &notice.markup],
    )
    .await?;
    Ok(())
}

/// The notice is done with: Telegram took it, refused it for good, or it was dead-lettered.
pub async fn delivered(db: &Pool, bot_id: BotId, id: &str) -> Result<(), StoreError> {
    query(
        db,
        "UPDATE notices SET sent_at = now() WHERE bot_id = $1 AND id = $2 AND sent_at IS NULL",
        &[&bot_id, &id],
    )
    .await?;
    Ok(())
}

/// Notices not delivered yet, oldest first: journaled at least `grace` ago (the outbox has had
/// its chance), and less than a day ago (Redis remembers a queued id that long, so an older one
/// cannot be told from one it lost).
pub async fn undelivered(
    db: &Pool,
    bot_id: BotId,
    grace: std::time::Duration,
    limit: i64,
) -> Result<Vec<Notice>, StoreError> {
    let grace = grace.as_secs_f64();
    let rows = query(
        db,
        "SELECT id, chat_id, text, markup FROM notices
         WHERE bot_id = $1 AND sent_at IS NULL
           AND created_at < now() - make_interval(secs => $2)
           AND created_at > now() - interval '23 hours'
         ORDER BY created_at LIMIT $3",
        &[&bot_id, &grace, &limit],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| Notice { id: row.get(0), chat: row.get(1), text: row.get(2), markup: row.get(3) })
        .collect())
}

/// A broadcast's recipient was served (or refused, or dead-lettered).
pub async fn broadcast_delivered(db: &Pool, broadcast: i64, user: UserId) -> Result<(), StoreError> {
    query(
        db,
        "INSERT INTO broadcast_deliveries (broadcast_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[&broadcast, &user],
    )
    .await?;
    Ok(())
}
