//! A broadcast's share of the outbox: the admin's progress message, which the senders edit as
//! recipients are served, and the cancellation that makes them drop what is still queued.

use std::time::Duration;

use teloxide_core::prelude::Requester;
use teloxide_core::types::MessageId;

use super::queue::add_entry;
use super::sender::Sender;
use crate::kv::{BotKeys, Conn};
use crate::telegram::flood::Urgency;
use crate::types::{ChatId, UserId};

/// A broadcast's progress message is edited at most this often, and at the end: each edit of
/// a free broadcast takes a moment of the bot's rate from it (at 30 a second, 0.7%), and the
/// admin's chat takes one message a second (edits every 250 recipients held a paid broadcast
/// to 250 a second, its senders waiting for the chat's moments).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What the admin's progress message says, `done` recipients served of `total` (known once
/// every recipient is queued) or, until then, of the `estimate` counted at the start.
pub fn progress_text(id: i64, done: i64, (total, estimate): (Option<i64>, i64)) -> String {
    match total {
        Some(total) if done >= total => format!("Broadcast #{id}: done, {total} of {total} recipients."),
        _ => {
            let total = total.unwrap_or(estimate).max(done);
            format!("Broadcast #{id}: {done} of {total} recipients so far. /broadcast_cancel stops it.")
        }
    }
}

/// How long a broadcast's progress and cancellation are remembered (longer than any takes).
pub(super) const BROADCAST_MEMORY_MS: u64 = 7 * 24 * 3600 * 1000;

/// Tells the senders where broadcast `id`'s progress message is (`at`: the admin's chat and the
/// message), so that they edit it as they go, and about how many recipients it has; returns how
/// many they served already, and of how many if all are queued.
pub async fn report_progress_to(
    conn: &mut Conn,
    keys: &BotKeys,
    (id, estimate): (i64, i64),
    (chat, message): (ChatId, MessageId),
) -> redis::RedisResult<(i64, Option<i64>)> {
    let [progress, _] = keys.broadcast(id);
    let (done,): ((Option<i64>, Option<i64>, Option<i64>),) = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&progress)
        .arg("estimate")
        .arg(estimate)
        .arg("chat")
        .arg(chat)
        .arg("message")
        .arg(message.0)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&progress)
        .arg(BROADCAST_MEMORY_MS)
        .ignore()
        .cmd("HMGET")
        .arg(&progress)
        .arg(&["sent", "refused", "total"])
        .query_async(conn)
        .await?;
    Ok((done.0.unwrap_or(0) + done.1.unwrap_or(0), done.2))
}

/// The outbox id of broadcast `id`'s message to `user`.
pub fn message_id(id: i64, user: UserId) -> String {
    format!("bc:{id}:{user}")
}

/// Queues broadcast `id`'s message to `user`, once. The entry names the broadcast, not its
/// text: the text is stored once, in Postgres, whatever the audience (`Sender::deliver`).
pub async fn add_recipient(conn: &mut Conn, keys: &BotKeys, id: i64, user: UserId) -> anyhow::Result<bool> {
    let message = message_id(id, user);
    add_entry(conn, keys, (&message, user.private_chat()), ("", ""), Some(id)).await
}

/// Records in Redis that broadcast `id`'s recipients up to `user` are queued: after their entries
/// and before Postgres's cursor moves past them. Redis keeps a prefix of its writes when it
/// loses some (an append-only file, a replica), so a mark that survived means its entries did:
/// the reconciler queues again what lies between the mark and the cursor.
pub async fn queued_through(
    conn: &mut Conn,
    keys: &BotKeys,
    id: i64,
    user: UserId,
) -> redis::RedisResult<()> {
    let [progress, _] = keys.broadcast(id);
    redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&progress)
        .arg("queued_through")
        .arg(user)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&progress)
        .arg(BROADCAST_MEMORY_MS)
        .ignore()
        .query_async(conn)
        .await
}

/// Makes every sender drop what is still queued of broadcast `id`.
pub async fn cancel_broadcast(conn: &mut Conn, keys: &BotKeys, id: i64) -> redis::RedisResult<()> {
    let [_, cancelled] = keys.broadcast(id);
    redis::cmd("SET").arg(&cancelled).arg(1).arg("PX").arg(BROADCAST_MEMORY_MS).query_async(conn).await
}

impl Sender {
    /// Whether the message belongs to a broadcast its admin cancelled.
    pub(super) async fn cancelled(
        &self,
        conn: &mut Conn,
        broadcast: Option<i64>,
    ) -> redis::RedisResult<bool> {
        let Some(id) = broadcast else {
            return Ok(false);
        };
        let [_, cancelled] = self.bot.keys.broadcast(id);
        redis::cmd("EXISTS").arg(&cancelled).query_async(conn).await
    }

    /// Counts one recipient of broadcast `id` done, and now and then (and at the end) edits the
    /// admin's progress message.
    pub(super) async fn progress(&self, conn: &mut Conn, id: i64, sent: bool) -> anyhow::Result<()> {
        let [progress, _] = self.bot.keys.broadcast(id);
        // The edit is due if no sender made one within PROGRESS_EVERY (this one takes its turn).
        let (fields, due): (Vec<Option<i64>>, Option<String>) = redis::pipe()
            .atomic()
            .cmd("HINCRBY")
            .arg(&progress)
            .arg(if sent { "sent" } else { "refused" })
            .arg(1)
            .ignore()
            .cmd("HMGET")
            .arg(&progress)
            .arg(&["sent", "refused", "total", "estimate", "chat", "message"])
            .cmd("SET")
            .arg(format!("{progress}:edited"))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(PROGRESS_EVERY.as_millis() as u64)
            .query_async(conn)
            .await?;
        let field = |n: usize| fields.get(n).copied().flatten();
        let done = field(0).unwrap_or(0) + field(1).unwrap_or(0);
        let (total, estimate) = (field(2), field(3).unwrap_or(0));
        let (chat, message) = (field(4).map(ChatId), field(5).and_then(|m| i32::try_from(m).ok()));
        if let (Some(chat), Some(message)) = (chat, message)
            && (due.is_some() || Some(done) == total)
        {
            let text = progress_text(id, done, (total, estimate));
            let api = &self.bot.api;
            let name = self.bot.config.name.as_str();
            let edited = self
                .flood
                .send(conn, (&self.bot.keys, name), chat, Urgency::Queued, || {
                    api.edit_message_text(chat, MessageId(message), text.clone())
                })
                .await?;
            if let Err(e) = edited {
                tracing::warn!(bot = name, broadcast = id, error = %e, "could not edit a broadcast's progress");
            }
        }
        Ok(())
    }
}
