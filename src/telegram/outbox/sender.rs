//! A worker's sender: reads the bot's outbox in the consumer group and delivers each message
//! within the flood limits, acknowledging it once Telegram took it or refused it for good.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::{StreamExt, TryStreamExt};
use redis::streams::{StreamId, StreamReadReply};
use teloxide_core::RequestError;
use teloxide_core::payloads::SendMessageSetters;
use teloxide_core::prelude::Requester;
use teloxide_core::types::InlineKeyboardMarkup;

use super::queue::{GROUP, OutboxConfig};
use crate::kv::{self, Conn};
use crate::metrics::Metrics;
use crate::random::rand_u64;
use crate::shutdown::CancellationToken;
use crate::store::user_cache::Users;
use crate::store::{StoreError, broadcasts, notices};
use crate::telegram::client::Client;
use crate::telegram::flood::{Flood, Urgency};
use crate::telegram::refusals::{self, Verdict};
use crate::types::{ChatId, UserId};

/// Entries a sender takes at a time.
pub(super) const BATCH: usize = 16;
/// Entries a sender delivers at once: as many may be sent again if it dies before acknowledging
/// them.
pub const IN_FLIGHT: usize = 4;

pub struct Sender {
    pub bot: Arc<Client>,
    /// Where a delivered notice or broadcast recipient is journaled (`store::notices`).
    pub db: deadpool_postgres::Pool,
    /// Where a user Telegram refused for good is marked unreachable.
    pub users: Arc<Users>,
    pub flood: Arc<Flood>,
    pub metrics: Arc<Metrics>,
    pub config: OutboxConfig,
    /// What the broadcasts it sends say, read once each.
    pub contents: BroadcastContents,
}

impl Sender {
    /// Delivers the bot's outbox until `shutdown`, starting afresh after any Redis error. The
    /// sender has a connection of its own: its blocking reads would hold up a shared one.
    pub async fn run(self, client: kv::Client, shutdown: CancellationToken) {
        let me = format!("{:016x}", rand_u64());
        loop {
            let sending = async {
                let mut conn = client.connect(self.block() + Duration::from_secs(5)).await?;
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
    pub(super) async fn deliver(&self, conn: &mut Conn, entry: &StreamId) -> anyhow::Result<()> {
        let broadcast = entry.get::<i64>("broadcast");
        let (text, paid) = match (entry.get::<String>("text"), broadcast) {
            (Some(text), _) => (Some(text.into()), false),
            (None, Some(id)) => match self.contents.of(&self.db, id).await? {
                Some(content) => (Some(content.text.clone()), content.paid),
                None => (None, false),
            },
            (None, None) => (None, false),
        };
        let (Some(chat), Some(text)) = (entry.get::<i64>("chat").map(ChatId), text) else {
            tracing::error!(id = %entry.id, "an outbox entry without chat or text; dropped");
            let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
            return Ok(());
        };
        match (self.halted(conn, broadcast).await?, broadcast) {
            (Some(Halt::Cancelled), _) => {
                let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
                return Ok(());
            }
            // Sent after all if it was resumed meanwhile.
            (Some(Halt::Paused), Some(id)) if self.park(conn, entry, id).await? => return Ok(()),
            _ => {}
        }
        let markup: Option<InlineKeyboardMarkup> =
            entry.get::<String>("markup").and_then(|json| serde_json::from_str(&json).ok());
        let api = &self.bot.api;
        let name = self.bot.config.name.as_str();
        let check = conn.clone();
        let urgency = if paid { Urgency::Paid(self.bot.config.paid_rate) } else { Urgency::Queued };
        let sent = self
            .flood
            .send(conn, (&self.bot.keys, name), chat, urgency, || {
                let mut request = api.send_message(chat, &*text);
                if let Some(markup) = markup.clone() {
                    request = request.reply_markup(markup);
                }
                if paid {
                    request = request.allow_paid_broadcast(true);
                }
                let mut check = check.clone();
                async move {
                    // Asked again once its moment came: a broadcast cancelled or paused while
                    // this message waited for it sends nothing more. (A failed check is a failed
                    // call: the entry stays pending and is tried again.)
                    let unavailable =
                        |e: redis::RedisError| RequestError::Io(Arc::new(std::io::Error::other(e)));
                    if let Some(halt) = self.halted(&mut check, broadcast).await.map_err(unavailable)? {
                        return Ok(Err(halt));
                    }
                    request.await.map(Ok)
                }
            })
            .await;
        if let (Ok(Ok(Err(halt))), Some(id)) = (&sent, broadcast) {
            // Dropped, or parked; one resumed meanwhile stays pending, and is claimed again.
            if *halt == Halt::Cancelled {
                let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
            } else {
                self.park(conn, entry, id).await?;
            }
            return Ok(());
        }
        if let Ok(Err(e)) = &sent {
            refusals::refused(&self.users, conn, &self.bot.keys, (self.bot.config.id, chat), e).await?;
        }
        let verdict = sent.as_ref().map_or(Verdict::Error, Verdict::of);
        self.metrics.bot_api_calls.with_label_values(&["sendMessage", verdict.label()]).inc();
        if verdict.is_final() {
            let () = self.done(redis::pipe(), &entry.id).query_async(conn).await?;
            self.journal(entry).await;
            if let Some(id) = broadcast {
                self.progress(conn, (id, paid), verdict == Verdict::Ok).await?;
            }
        }
        Ok(())
    }

    /// Journals an entry done with (delivered, refused or dead-lettered) in Postgres, so that
    /// the reconciler does not queue it again. After the acknowledgement in Redis: should this
    /// fail, a duplicate needs Redis to lose the entry's id as well.
    pub(super) async fn journal(&self, entry: &StreamId) {
        let (bot_id, chat) = (self.bot.config.id, entry.get::<i64>("chat").unwrap_or_default());
        let journaled = match (entry.get::<i64>("broadcast"), entry.get::<String>("id")) {
            (Some(broadcast), _) => notices::broadcast_delivered(&self.db, broadcast, UserId(chat)).await,
            (None, Some(id)) => notices::delivered(&self.db, bot_id, &id).await,
            (None, None) => Ok(()),
        };
        if let Err(e) = journaled {
            tracing::warn!(bot = %self.bot.config.name, id = %entry.id, error = %e, "could not journal a delivered outbox message");
        }
    }
}

/// Why a broadcast's message is not sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Halt {
    Cancelled,
    Paused,
}

/// What broadcasts say, as a sender read it from Postgres: a broadcast's entries carry none.
#[derive(Default)]
pub struct BroadcastContents(Mutex<HashMap<i64, Arc<Content>>>);

/// A broadcast's text, and whether it is paid.
pub(super) struct Content {
    text: Arc<str>,
    paid: bool,
}

/// Contents a sender keeps (broadcasts going at once are few; past it, it reads them again).
const CONTENTS_KEPT: usize = 64;

impl BroadcastContents {
    /// Broadcast `id`'s content; `None` if Postgres has no such broadcast.
    pub(super) async fn of(&self, db: &Pool, id: i64) -> Result<Option<Arc<Content>>, StoreError> {
        if let Some(content) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(Some(content.clone()));
        }
        let Some(stored) = broadcasts::content(db, id).await? else {
            return Ok(None);
        };
        let content = Arc::new(Content { text: stored.text.into(), paid: stored.paid });
        let mut contents = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if contents.len() >= CONTENTS_KEPT {
            contents.clear();
        }
        contents.insert(id, content.clone());
        Ok(Some(content))
    }
}
