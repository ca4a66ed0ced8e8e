//! The durable outbox: messages that are not the reply to the update in hand (a post for the
//! moderators to review, a verdict for its author) wait in a Redis stream per bot until a
//! worker's sender has delivered them (invariant 8 applies: they go through the flood control).
//!
//! `outbox_add.lua` queues a message once per id, so a redelivered update or a second click
//! queues nothing twice. Every worker reads the stream in the consumer group `senders`; an
//! entry is acknowledged and deleted once Telegram took it or refused it for good. One that
//! failed (Telegram or the network down) stays pending, and any sender claims it again once it
//! has been idle for `claim_after` — so do the entries of a sender that died, which then leaves
//! the group. After `max_deliveries` the entry moves to the dead stream
//! (`<bot prefix>outbox:dead`) and is counted: nothing is retried forever, nothing is dropped
//! silently.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamId, StreamInfoConsumersReply, StreamPendingCountReply, StreamReadReply};
use teloxide_core::RequestError;
use teloxide_core::payloads::SendMessageSetters;
use teloxide_core::prelude::Requester;
use teloxide_core::types::{InlineKeyboardMarkup, MessageId};

use futures_util::{StreamExt, TryStreamExt};
use redis::AsyncConnectionConfig;

use super::client::Client;
use super::flood::{Flood, Urgency};
use super::refusals;
use crate::kv::{BotKeys, Conn, scripts};
use crate::metrics::Metrics;
use crate::random::rand_u64;
use crate::shutdown::CancellationToken;
use crate::store::user_cache::Users;
use crate::types::ChatId;

const GROUP: &str = "senders";
/// A broadcast's progress message is edited after this many recipients, and at the end: each
/// edit takes a moment of the bot's rate from the broadcast (at 50, 2% of it).
const PROGRESS_EVERY: i64 = 250;

/// What the admin's progress message says.
pub fn progress_text(id: i64, done: i64, total: i64) -> String {
    if done >= total {
        format!("Broadcast #{id}: done, {total} of {total} recipients.")
    } else {
        format!("Broadcast #{id}: {done} of {total} recipients so far. /broadcast_cancel stops it.")
    }
}
/// How long a broadcast's progress and cancellation are remembered (longer than any takes).
const BROADCAST_MEMORY_MS: u64 = 7 * 24 * 3600 * 1000;

/// Tells the senders where broadcast `id`'s progress message is (`at`: the admin's chat and the
/// message), so that they edit it as they go; returns how many recipients they served already.
pub async fn report_progress_to(
    conn: &mut Conn,
    keys: &BotKeys,
    id: i64,
    total: i64,
    (chat, message): (ChatId, MessageId),
) -> redis::RedisResult<i64> {
    let [progress, _] = keys.broadcast(id);
    let (done,): ((Option<i64>, Option<i64>),) = redis::pipe()
        .atomic()
        .cmd("HSET")
        .arg(&progress)
        .arg("total")
        .arg(total)
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
        .arg(&["sent", "refused"])
        .query_async(conn)
        .await?;
    Ok(done.0.unwrap_or(0) + done.1.unwrap_or(0))
}

/// Makes every sender drop what is still queued of broadcast `id`.
pub async fn cancel_broadcast(conn: &mut Conn, keys: &BotKeys, id: i64) -> redis::RedisResult<()> {
    let [_, cancelled] = keys.broadcast(id);
    redis::cmd("SET").arg(&cancelled).arg(1).arg("PX").arg(BROADCAST_MEMORY_MS).query_async(conn).await
}

/// Entries a sender takes at a time.
const BATCH: usize = 16;
/// Entries a sender delivers at once.
const IN_FLIGHT: usize = 4;
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

pub struct Sender {
    pub bot: Arc<Client>,
    /// Where a user Telegram refused for good is marked unreachable.
    pub users: Arc<Users>,
    pub flood: Arc<Flood>,
    pub metrics: Arc<Metrics>,
    pub config: OutboxConfig,
}

impl Sender {
    /// Delivers the bot's outbox until `shutdown`, starting afresh after any Redis error. The
    /// sender has a connection of its own: its blocking reads would hold up a shared one.
    pub async fn run(self, client: redis::Client, shutdown: CancellationToken) {
        let me = format!("{:016x}", rand_u64());
        let config =
            AsyncConnectionConfig::new().set_response_timeout(Some(self.block() + Duration::from_secs(5)));
        loop {
            let sending = async {
                let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
                self.send_all(&mut conn, &me).await
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = sending => if let Err(e) = result {
                    tracing::warn!(bot = %self.bot.config.name, error = %e, "outbox sender; starting again");
                },
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    async fn send_all(&self, conn: &mut Conn, me: &str) -> anyhow::Result<()> {
        let [stream, _] = self.bot.keys.outbox();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&stream)
            .arg(GROUP)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        self.forget_departed(conn, me).await?;
        let block_ms = self.block().as_millis() as u64;
        loop {
            let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(me)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(conn)
                .await?;
            let entries = read.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
            self.deliver_all(conn, entries).await?;
            self.claim(conn, me).await?;
            self.measure(conn).await?;
        }
    }

    /// Removes from the group the senders that have left: nothing pending, silent for longer
    /// than `claim_after` (each worker's sender joins under a new name, so every restart would
    /// leave one behind). Removing a live one that is merely waiting costs nothing: its next
    /// read makes it a member again.
    async fn forget_departed(&self, conn: &mut Conn, me: &str) -> anyhow::Result<()> {
        let [stream, _] = self.bot.keys.outbox();
        let members: StreamInfoConsumersReply =
            redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP).query_async(conn).await?;
        let silent = self.config.claim_after.as_millis();
        for gone in
            members.consumers.iter().filter(|c| c.name != me && c.pending == 0 && c.idle as u128 > silent)
        {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&stream)
                .arg(GROUP)
                .arg(&gone.name)
                .query_async(conn)
                .await?;
        }
        Ok(())
    }

    /// Takes over entries idle past `claim_after` (failed, or their sender died), then forgets
    /// the senders it took them from if they have left.
    async fn claim(&self, conn: &mut Conn, me: &str) -> anyhow::Result<()> {
        let [stream, dead] = self.bot.keys.outbox();
        let idle = self.config.claim_after.as_millis() as u64;
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle)
            .arg("-")
            .arg("+")
            .arg(BATCH)
            .query_async(conn)
            .await?;
        let took_over = !pending.ids.is_empty();
        for waiting in pending.ids {
            let claimed: redis::streams::StreamClaimReply = redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(me)
                .arg(idle)
                .arg(&waiting.id)
                .query_async(conn)
                .await?;
            for entry in claimed.ids {
                if waiting.times_delivered < self.config.max_deliveries {
                    self.metrics
                        .outbox_redeliveries
                        .with_label_values(&[self.bot.config.name.as_str()])
                        .inc();
                    self.deliver(conn, &entry).await?;
                    continue;
                }
                let name = self.bot.config.name.as_str();
                tracing::error!(bot = name, id = %entry.id, deliveries = waiting.times_delivered, "outbox message dead-lettered");
                let mut dead_letter = redis::pipe();
                dead_letter.atomic().cmd("XADD").arg(&dead).arg("*");
                for field in entry.map.keys() {
                    dead_letter.arg(field).arg(entry.get::<String>(field).unwrap_or_default());
                }
                dead_letter.ignore();
                let () = self.done(dead_letter, &entry.id).query_async(conn).await?;
                self.metrics.outbox_dead.with_label_values(&[name]).inc();
                sentry::with_scope(
                    |scope| scope.set_tag("bot", name),
                    || crate::telemetry::report_error("outbox message dead-lettered"),
                );
            }
        }
        if took_over {
            self.forget_departed(conn, me).await?;
        }
        Ok(())
    }

    /// Sends `entries`, [`IN_FLIGHT`] at a time: each waits for its moment within the flood
    /// limits, so a moment the limits allow is not left unused while a message is answered.
    async fn deliver_all(
        &self,
        conn: &Conn,
        entries: impl IntoIterator<Item = StreamId>,
    ) -> anyhow::Result<()> {
        futures_util::stream::iter(entries)
            .map(|entry| {
                let mut conn = conn.clone();
                async move { self.deliver(&mut conn, &entry).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await
    }

    /// Sends one entry; acknowledges it unless the failure may pass (then it stays pending).
    async fn deliver(&self, conn: &mut Conn, entry: &StreamId) -> anyhow::Result<()> {
        let (Some(chat), Some(text)) = (entry.get::<i64>("chat").map(ChatId), entry.get::<String>("text"))
        else {
            tracing::error!(id = %entry.id, "an outbox entry without chat or text; dropped");
            let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
            return Ok(());
        };
        let broadcast = entry.get::<i64>("broadcast");
        if self.cancelled(conn, broadcast).await? {
            let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
            return Ok(());
        }
        let markup: Option<InlineKeyboardMarkup> =
            entry.get::<String>("markup").and_then(|json| serde_json::from_str(&json).ok());
        let api = &self.bot.api;
        let name = self.bot.config.name.as_str();
        let check = conn.clone();
        let sent = self
            .flood
            .send(conn, (&self.bot.keys, name), chat, Urgency::Queued, || {
                let request = api.send_message(chat, text.clone());
                let request = match markup.clone() {
                    Some(markup) => request.reply_markup(markup),
                    None => request,
                };
                let mut check = check.clone();
                async move {
                    // Asked again once its moment came: a broadcast cancelled while this
                    // message waited for it sends nothing more. (A failed check is a failed
                    // call: the entry stays pending and is tried again.)
                    let unavailable =
                        |e: redis::RedisError| RequestError::Io(Arc::new(std::io::Error::other(e)));
                    if self.cancelled(&mut check, broadcast).await.map_err(unavailable)? {
                        return Ok(None);
                    }
                    request.await.map(Some)
                }
            })
            .await;
        if let Ok(Ok(None)) = sent {
            let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
            return Ok(());
        }
        if let Ok(Err(e)) = &sent {
            refusals::refused(&self.users, conn, &self.bot.keys, (self.bot.config.id, chat), e).await?;
        }
        let label = match &sent {
            Ok(result) => refusals::label(result),
            Err(_) => "error",
        };
        self.metrics.bot_api_calls.with_label_values(&["sendMessage", label]).inc();
        if label == "ok" || label == "refused" {
            let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
            if let Some(id) = broadcast {
                self.progress(conn, id, label == "ok").await?;
            }
        }
        Ok(())
    }

    /// Whether the message belongs to a broadcast its admin cancelled.
    async fn cancelled(&self, conn: &mut Conn, broadcast: Option<i64>) -> redis::RedisResult<bool> {
        let Some(id) = broadcast else {
            return Ok(false);
        };
        let [_, cancelled] = self.bot.keys.broadcast(id);
        redis::cmd("EXISTS").arg(&cancelled).query_async(conn).await
    }

    /// Counts one recipient of broadcast `id` done, and now and then (and at the end) edits the
    /// admin's progress message.
    async fn progress(&self, conn: &mut Conn, id: i64, sent: bool) -> anyhow::Result<()> {
        let [progress, _] = self.bot.keys.broadcast(id);
        let (fields,): (Vec<Option<i64>>,) = redis::pipe()
            .atomic()
            .cmd("HINCRBY")
            .arg(&progress)
            .arg(if sent { "sent" } else { "refused" })
            .arg(1)
            .ignore()
            .cmd("HMGET")
            .arg(&progress)
            .arg(&["sent", "refused", "total", "chat", "message"])
            .query_async(conn)
            .await?;
        let field = |n: usize| fields.get(n).copied().flatten();
        let done = field(0).unwrap_or(0) + field(1).unwrap_or(0);
        let (total, chat, message) =
            (field(2), field(3).map(ChatId), field(4).and_then(|m| i32::try_from(m).ok()));
        if let (Some(total), Some(chat), Some(message)) = (total, chat, message)
            && (done % PROGRESS_EVERY == 0 || done == total)
        {
            let text = progress_text(id, done, total);
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

    /// How long a read waits for new entries before the sender looks for idle ones.
    fn block(&self) -> Duration {
        self.config.claim_after.clamp(Duration::from_millis(1), Duration::from_secs(2))
    }

    /// `pipe` with the entry's acknowledgement and deletion added, atomically.
    fn done(&self, mut pipe: redis::Pipeline, id: &str) -> redis::Pipeline {
        let [stream, _] = self.bot.keys.outbox();
        pipe.atomic()
            .cmd("XACK")
            .arg(&stream)
            .arg(GROUP)
            .arg(id)
            .ignore()
            .cmd("XDEL")
            .arg(&stream)
            .arg(id)
            .ignore();
        pipe
    }

    /// The backlog and the age of its oldest message, as metrics.
    async fn measure(&self, conn: &mut Conn) -> anyhow::Result<()> {
        let [stream, _] = self.bot.keys.outbox();
        let name = self.bot.config.name.as_str();
        let (backlog, oldest): (u64, Vec<(String, Vec<String>)>) = redis::pipe()
            .cmd("XLEN")
            .arg(&stream)
            .cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await?;
        self.metrics.outbox_backlog.with_label_values(&[name]).set(backlog as i64);
        let age =
            oldest.first().and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok()).map_or(0.0, |ms| {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                (now.as_millis() as u64).saturating_sub(ms) as f64 / 1000.0
            });
        self.metrics.outbox_oldest_age_seconds.with_label_values(&[name]).set(age);
        Ok(())
    }
}
