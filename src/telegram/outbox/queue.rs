//! Queueing a message: once per id, into the bot's stream, read by the consumer group
//! [`GROUP`].

use std::time::Duration;

use deadpool_postgres::Pool;
use teloxide_core::types::InlineKeyboardMarkup;

use crate::kv::{BotKeys, Conn, scripts};
use crate::store::StoreError;
use crate::store::notices::{self, Notice};
use crate::types::{BotId, ChatId};

/// The consumer group every worker's sender reads the stream in.
pub const GROUP: &str = "senders";
/// How long a queued message's id is remembered against queueing it twice.
const REMEMBER_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// A pending entry idle this long is claimed by another sender.
    pub claim_after: Duration,
    /// Deliveries of one entry before it is dead-lettered.
    pub max_deliveries: usize,
}

/// One message for the outbox.
pub struct Message<'a> {
    /// Queued once per id.
    pub id: &'a str,
    pub chat: ChatId,
    pub text: &'a str,
    pub buttons: Option<&'a InlineKeyboardMarkup>,
}

/// Journals a notice in Postgres, then queues it: should Redis lose it before it is delivered,
/// the reconciler queues it again (`rebuild`).
pub async fn notify(
    db: &Pool,
    conn: &mut Conn,
    keys: &BotKeys,
    bot_id: BotId,
    message: &Message<'_>,
) -> Result<(), NotifyError> {
    let markup =
        message.buttons.map(serde_json::to_string).transpose().map_err(|e| NotifyError::Redis(e.into()))?;
    let notice =
        Notice { id: message.id.to_owned(), chat: message.chat, text: message.text.to_owned(), markup };
    notices::record(db, bot_id, &notice).await?;
    queue(conn, keys, &notice).await.map_err(NotifyError::Redis)?;
    Ok(())
}

/// Why a notice could not be journaled and queued.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("queueing in redis: {0:#}")]
    Redis(anyhow::Error),
}

/// Queues `notice`, once per its id.
pub(super) async fn queue(conn: &mut Conn, keys: &BotKeys, notice: &Notice) -> anyhow::Result<bool> {
    let markup = notice.markup.as_deref().unwrap_or_default();
    add_entry(conn, keys, (&notice.id, notice.chat), (&notice.text, markup), None).await
}

/// `outbox_add.lua`: an entry with `id` for `chat`, its text and markup ('' for none), and the
/// broadcast it is one of.
pub(super) async fn add_entry(
    conn: &mut Conn,
    keys: &BotKeys,
    (id, chat): (&str, ChatId),
    (text, markup): (&str, &str),
    broadcast: Option<i64>,
) -> anyhow::Result<bool> {
    let [stream, _] = keys.outbox();
    let added: Option<String> = scripts::OUTBOX_ADD
        .key(&stream)
        .key(keys.outbox_once(id))
        .arg(REMEMBER_MS)
        .arg(chat)
        .arg(text)
        .arg(markup)
        .arg(broadcast.map(|id| id.to_string()).unwrap_or_default())
        .arg(id)
        .invoke_async(conn)
        .await?;
    Ok(added.is_some())
}
