//! Queueing a message: once per id, into the bot's stream, read by the consumer group
//! [`GROUP`].

use std::time::Duration;

use teloxide_core::types::InlineKeyboardMarkup;

use crate::kv::{BotKeys, Conn, scripts};
use crate::types::ChatId;

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
    pub broadcast: Option<i64>,
}

/// Queues `message`, once per its id; false if it was queued before.
pub async fn add(conn: &mut Conn, keys: &BotKeys, message: &Message<'_>) -> anyhow::Result<bool> {
    let [stream, _] = keys.outbox();
    let markup = message.buttons.map(serde_json::to_string).transpose()?.unwrap_or_default();
    let added: Option<String> = scripts::OUTBOX_ADD
        .key(&stream)
        .key(keys.outbox_once(message.id))
        .arg(REMEMBER_MS)
        .arg(message.chat)
        .arg(message.text)
        .arg(markup)
        .arg(message.broadcast.map(|id| id.to_string()).unwrap_or_default())
        .invoke_async(conn)
        .await?;
    Ok(added.is_some())
}
