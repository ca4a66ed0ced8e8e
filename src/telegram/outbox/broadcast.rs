//! A broadcast's share of the outbox: the admin's progress message, which the senders edit as
//! recipients are served, and the cancellation that makes them drop what is still queued.

use std::time::Duration;

use teloxide_core::prelude::Requester;
use teloxide_core::types::MessageId;

use super::queue::add_entry;
use super::sender::{Halt, Sender};
use super::upkeep::fields;
use redis::streams::StreamId;

use crate::kv::{BotKeys, Conn, scripts};
use crate::settings::BotConfig;
use crate::telegram::flood::Urgency;
use crate::types::{ChatId, UserId};

/// A broadcast's progress message is edited at most this often, and at the end: each edit of
/// a free broadcast takes a moment of the bot's rate from it (at 30 a second, 0.7%), and the
/// admin's chat takes one message a second (edits every 250 recipients held a paid broadcast
/// to 250 a second, its senders waiting for the chat's moments).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Messages a second a broadcast goes at: the bot's paid rate if it is `paid`, else `free`, the
/// bot's rate outside paid broadcasts (`None`: no limit).
pub fn rate(bot: &BotConfig, free: Option<f64>, paid: bool) -> Option<f64> {
    if paid { Some(f64::from(bot.paid_rate)) } else { free }
}

/// How far a broadcast got, as the admin's progress message tells it.
pub struct Progress {
    pub id: i64,
    /// Recipients Telegram took the message for, and those it refused for good (blocked the
    /// bot, deleted their account).
    pub sent: i64,
    pub refused: i64,
    /// Every recipient, known once all are queued; until then, about as many as were counted
    /// at the start.
    pub total: Option<i64>,
    pub estimate: i64,
    /// Messages a second it goes at (`None`: no limit).
    pub rate: Option<f64>,
}

impl Progress {
    pub fn text(&self) -> String {
        let Self { id, sent, refused, .. } = *self;
        let done = sent + refused;
        let unreachable =
            if refused > 0 { format!(", {refused} could not be reached") } else { String::new() };
        if let Some(total) = self.total.filter(|total| done >= *total) {
            return format!("Broadcast #{id}: done, {total} of {total} recipients{unreachable}.");
        }
        let to_go = self.total.unwrap_or(self.estimate).saturating_sub(done).max(0);
        let left = match self.rate {
            Some(rate) => format!(", about {} left", duration_text(to_go as f64 / rate)),
            None => String::new(),
        };
        format!("Broadcast #{id}: {sent} sent{unreachable}, {to_go} to go{left}. /broadcast_cancel stops it.")
    }
}

/// Seconds as a person reads them: "40 s", "17 min", "9 h 16 min".
fn duration_text(seconds: f64) -> String {
    let seconds = seconds.ceil() as u64;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds.div_ceil(60)),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

/// How long a broadcast's progress and cancellation are remembered (longer than any takes).
pub(super) const BROADCAST_MEMORY_MS: u64 = 7 * 24 * 3600 * 1000;

/// Tells the senders where broadcast `id`'s progress message is (`at`: the admin's chat and the
/// message), so that they edit it as they go, and about how many recipients it has; returns how
/// many they sent and how many were refused already, and of how many if all are queued.
pub async fn report_progress_to(
    conn: &mut Conn,
    keys: &BotKeys,
    (id, estimate): (i64, i64),
    (chat, message): (ChatId, MessageId),
) -> redis::RedisResult<(i64, i64, Option<i64>)> {
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
    Ok((done.0.unwrap_or(0), done.1.unwrap_or(0), done.2))
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

/// Makes every sender drop what is still queued of broadcast `id`, parked or not.
pub async fn cancel_broadcast(conn: &mut Conn, keys: &BotKeys, id: i64) -> redis::RedisResult<()> {
    let ([_, cancelled], [paused, parked]) = (keys.broadcast(id), keys.broadcast_pause(id));
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(&cancelled)
        .arg(1)
        .arg("PX")
        .arg(BROADCAST_MEMORY_MS)
        .cmd("DEL")
        .arg(&paused)
        .arg(&parked)
        .query_async(conn)
        .await
}

/// Makes every sender park what is queued of broadcast `id` (`paused`), or queues again what
/// they parked.
pub async fn pause_broadcast(
    conn: &mut Conn,
    keys: &BotKeys,
    id: i64,
    paused: bool,
) -> redis::RedisResult<()> {
    let [mark, parked] = keys.broadcast_pause(id);
    if paused {
        return redis::cmd("SET")
            .arg(&mark)
            .arg(1)
            .arg("PX")
            .arg(BROADCAST_MEMORY_MS)
            .query_async(conn)
            .await;
    }
    let _: i64 =
        scripts::BROADCAST_RESUME.key(&keys.outbox()[0]).key(&mark).key(&parked).invoke_async(conn).await?;
    Ok(())
}

impl Sender {
    /// Whether the message belongs to a broadcast its admin cancelled or paused.
    pub(super) async fn halted(
        &self,
        conn: &mut Conn,
        broadcast: Option<i64>,
    ) -> redis::RedisResult<Option<Halt>> {
        let Some(id) = broadcast else {
            return Ok(None);
        };
        let ([_, cancelled], [paused, _]) = (self.bot.keys.broadcast(id), self.bot.keys.broadcast_pause(id));
        let (cancelled, paused): (Option<String>, Option<String>) =
            redis::cmd("MGET").arg(&cancelled).arg(&paused).query_async(conn).await?;
        Ok(match (cancelled, paused) {
            (Some(_), _) => Some(Halt::Cancelled),
            (None, Some(_)) => Some(Halt::Paused),
            (None, None) => None,
        })
    }

    /// Moves the entry of paused broadcast `id` out of the outbox until it is resumed; false if
    /// it was resumed meanwhile (the entry is left as it was).
    pub(super) async fn park(&self, conn: &mut Conn, entry: &StreamId, id: i64) -> redis::RedisResult<bool> {
        let [paused, parked] = self.bot.keys.broadcast_pause(id);
        let mut script = scripts::BROADCAST_PARK.prepare_invoke();
        script.key(&self.bot.keys.outbox()[0]).key(&paused).key(&parked).arg(&entry.id).arg(fields(entry));
        let moved: i64 = script.invoke_async(conn).await?;
        Ok(moved == 1)
    }

    /// Counts one recipient of broadcast `id` (`paid` or not) done, and now and then (and at the
    /// end) edits the admin's progress message.
    pub(super) async fn progress(
        &self,
        conn: &mut Conn,
        (id, paid): (i64, bool),
        sent: bool,
    ) -> anyhow::Result<()> {
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
            .arg(self.bot.keys.broadcast_edited(id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(PROGRESS_EVERY.as_millis() as u64)
            .query_async(conn)
            .await?;
        let field = |n: usize| fields.get(n).copied().flatten();
        let rate = rate(&self.bot.config, self.flood.limits.per_bot, paid);
        let (sent, refused) = (field(0).unwrap_or(0), field(1).unwrap_or(0));
        let (total, estimate) = (field(2), field(3).unwrap_or(0));
        let progress = Progress { id, sent, refused, total, estimate, rate };
        let (chat, message) = (field(4).map(ChatId), field(5).and_then(|m| i32::try_from(m).ok()));
        if let (Some(chat), Some(message)) = (chat, message)
            && (due.is_some() || Some(sent + refused) == total)
        {
            let text = progress.text();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_message_tells_what_is_sent_refused_left_and_how_long_it_takes() {
        let at =
            |sent, refused, total, rate| Progress { id: 3, sent, refused, total, estimate: 100_000, rate };
        let paid = Some(1000.0);
        assert_eq!(
            at(0, 0, None, paid).text(),
            "Broadcast #3: 0 sent, 100000 to go, about 2 min left. /broadcast_cancel stops it."
        );
        assert_eq!(
            at(40_000, 2, None, paid).text(),
            "Broadcast #3: 40000 sent, 2 could not be reached, 59998 to go, about 1 min left. /broadcast_cancel stops it."
        );
        assert_eq!(
            at(1000, 0, None, Some(30.0)).text(),
            "Broadcast #3: 1000 sent, 99000 to go, about 55 min left. /broadcast_cancel stops it."
        );
        assert_eq!(
            at(0, 0, Some(1_000_000), Some(30.0)).text().split(", about ").nth(1),
            Some("9 h 15 min left. /broadcast_cancel stops it.")
        );
        assert_eq!(
            at(5, 0, None, None).text(),
            "Broadcast #3: 5 sent, 99995 to go. /broadcast_cancel stops it."
        );
        // More joined than were counted at the start: nothing is "to go" below zero.
        assert_eq!(
            at(100_001, 0, None, None).text(),
            "Broadcast #3: 100001 sent, 0 to go. /broadcast_cancel stops it."
        );
        assert_eq!(
            at(99_990, 20, Some(100_010), paid).text(),
            "Broadcast #3: done, 100010 of 100010 recipients, 20 could not be reached."
        );
        assert_eq!(at(7, 0, Some(7), paid).text(), "Broadcast #3: done, 7 of 7 recipients.");
    }
}
