//! Telegram's send limits, kept by every worker together (invariant 8).
//!
//! Before a message goes out, `flood_take.lua` reserves its moment on the bot's schedule and
//! the chat's (about 30 a second per bot, 1 a second per private chat, 20 a minute per group),
//! and the caller sleeps until then: workers never race for a slot, and no slot is asked for
//! twice. A caller that wakes well after its moment books another rather than go out late in a
//! burst with the others due meanwhile. A 429 sets the bot's pause for `retry_after`, which
//! every later reservation on every worker waits out; the refused message is sent again after
//! it. A failure that may pass (see [`is_transient`]) is tried again after a backoff with
//! jitter. Both are bounded; what Telegram refuses for good (blocked by the user, chat not
//! found) is never tried again. A message that would wait longer than the configured bound is
//! not sent: the update is answered 503, and Telegram redelivers it later.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teloxide_core::RequestError;

use super::pause;
use super::refusals::is_transient;
use crate::kv::{BotKeys, Conn, scripts};
use crate::metrics::Metrics;
use crate::random::rand_u64;
use crate::settings::FloodLimits;
use crate::types::ChatId;

/// Attempts at one message: the first, and those after a 429 or a network failure.
const ATTEMPTS: u32 = 3;
/// The first backoff after a network failure; doubled after each, with jitter.
const BACKOFF: Duration = Duration::from_millis(100);

pub struct Flood {
    pub limits: FloodLimits,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a message to chat {chat} would wait {wait:?} for Telegram's limits")]
    TooLong { chat: ChatId, wait: Duration },
    #[error("Telegram asked to wait {0:?}")]
    Paused(Duration),
}

/// Telegram counts messages as they arrive, we space them as they leave: 4% more room between
/// two absorbs the difference (up to 40 ms of delay on the way at 30 a second) and still uses
/// 96% of the allowed rate.
const MARGIN: f64 = 1.04;

/// How late a sender may wake for its moment and still take it. The margin leaves 40 ms at 30
/// a second for lateness and the way together; a sender later than this (its process stalled,
/// and with it every other sender there, all due meanwhile) books a new moment once rather than
/// go out in a burst with the others.
const LATE: Duration = Duration::from_millis(20);

/// Who is waiting for a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A reply, with Telegram's webhook call waiting on it: reserves the first free moment at
    /// once, and fails past `BOTFLEET_FLOOD_MAX_WAIT_MS`.
    Reply,
    /// A queued message (the outbox), with nobody waiting: reserves no more than
    /// [`QUEUED_AHEAD`] ahead, so that a long queue (a broadcast) never books the moments a
    /// reply needs, and waits as long as [`QUEUED_MAX_WAIT`].
    Queued,
    /// A paid broadcast's message (`allow_paid_broadcast`), queued likewise, at this many a
    /// second: on a schedule of its own, so it takes none of the bot's free moments, which
    /// replies need (Telegram's 1,000 a second then count both: the free rate's margin and the
    /// paid rate's keep them under it).
    Paid(u32),
}

/// How far ahead a queued message reserves its moment.
const QUEUED_AHEAD: Duration = Duration::from_secs(1);
/// How long a queued message may wait for its moment (only a backlog for one chat, 20 a minute
/// in a group, gets near it).
const QUEUED_MAX_WAIT: Duration = Duration::from_secs(600);

/// Microseconds between two messages at `rate` a second (0: no limit).
fn interval_us(rate: Option<f64>) -> u64 {
    rate.map_or(0, |rate| (1e6 * MARGIN / rate).ceil() as u64)
}

impl Flood {
    /// Whether any limit is kept at all (otherwise nothing waits, not even for a pause).
    pub fn enabled(&self) -> bool {
        let limits = &self.limits;
        limits.per_bot.is_some() || limits.per_chat.is_some() || limits.per_group.is_some()
    }

    /// Makes `call` (a message of the bot to `chat`) within the limits, as often as it takes
    /// (see the module's documentation), waiting for a moment as `urgency` allows; returns
    /// Telegram's last answer.
    pub async fn send<T, R>(
        &self,
        conn: &mut Conn,
        (keys, bot): (&BotKeys, &str),
        chat: ChatId,
        urgency: Urgency,
        call: impl Fn() -> R,
    ) -> Result<Result<T, RequestError>, FloodError>
    where
        R: IntoFuture<Output = Result<T, RequestError>>,
    {
        let paid = matches!(urgency, Urgency::Paid(_));
        let keys = keys.flood(chat, paid);
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.wait_for_moment(conn, &keys, bot, chat, urgency).await?;
            let result = call().await;
            let transient = result.as_ref().err().is_some_and(is_transient);
            if let Err(RequestError::RetryAfter(after)) = &result {
                // Every worker waits the pause out, whether or not this message is tried again.
                self.metrics.flood_pauses.with_label_values(&[bot]).inc();
                pause::pause(conn, &keys[2], after.duration()).await?;
            } else if !transient {
                return Ok(result);
            }
            if attempt == ATTEMPTS {
                return Ok(result);
            }
            if transient {
                let jitter = (rand_u64() >> 11) as f64 / (1u64 << 53) as f64;
                tokio::time::sleep((BACKOFF * 2u32.pow(attempt - 1)).mul_f64(0.5 + jitter)).await;
            }
        }
    }

    /// Reserves this message's moment and sleeps until it; after a sleep, waits out a pause
    /// that began meanwhile (a 429 seen by another worker) and reserves again; woken more than
    /// [`LATE`] after it, reserves once more.
    async fn wait_for_moment(
        &self,
        conn: &mut Conn,
        [bot_key, chat_key, pause_key]: &[String; 3],
        bot: &str,
        chat: ChatId,
        urgency: Urgency,
    ) -> Result<(), FloodError> {
        if !self.enabled() {
            return Ok(());
        }
        let limits = &self.limits;
        let per_chat = if chat.private_user().is_some() {
            limits.per_chat
        } else {
            limits.per_group.map(|per_minute| per_minute / 60.0)
        };
        let (horizon, max_wait) = match urgency {
            Urgency::Reply => (limits.max_wait, limits.max_wait),
            Urgency::Queued | Urgency::Paid(_) => (QUEUED_AHEAD, QUEUED_MAX_WAIT),
        };
        let per_bot = match urgency {
            Urgency::Paid(rate) => Some(f64::from(rate)),
            _ => limits.per_bot,
        };
        let mut waited = Duration::ZERO;
        let mut rebooked = false;
        loop {
            let asked = Instant::now();
            let wait_ms: i64 = scripts::FLOOD_TAKE
                .key(bot_key)
                .key(chat_key)
                .key(pause_key)
                .arg(interval_us(per_bot))
                .arg(interval_us(per_chat))
                .arg(horizon.min(max_wait.saturating_sub(waited)).as_millis() as u64)
                .invoke_async(conn)
                .await?;
            let wait = Duration::from_millis(wait_ms.unsigned_abs());
            if wait_ms < 0 {
                if waited + wait > max_wait {
                    return Err(FloodError::TooLong { chat, wait: waited + wait });
                }
                // Not reserved: ask again once the moment is within reach.
                let until_in_reach = wait.saturating_sub(horizon).max(Duration::from_millis(1));
                tokio::time::sleep(until_in_reach).await;
                waited += until_in_reach;
                continue;
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                waited += wait;
            }
            if !rebooked && asked.elapsed() > wait + LATE {
                rebooked = true;
                continue;
            }
            // A pause that began while this sender slept (a 429 another worker saw) is waited out.
            if wait.is_zero() || pause::paused(conn, pause_key).await?.is_none() {
                self.metrics.flood_wait_seconds.with_label_values(&[bot]).observe(waited.as_secs_f64());
                return Ok(());
            }
        }
    }
}

impl Flood {
    /// Makes `call`, a Bot API call that is no message (a callback query's answer): it takes no
    /// moment of the limits but waits out a pause after a 429 all the same, and a 429 of its own
    /// pauses the bot.
    pub async fn unmetered<T, R>(
        &self,
        conn: &mut Conn,
        keys: &BotKeys,
        call: R,
    ) -> Result<Result<T, RequestError>, FloodError>
    where
        R: IntoFuture<Output = Result<T, RequestError>>,
    {
        let pause_key = keys.flood_pause();
        if self.enabled()
            && let Some(wait) = pause::paused(conn, &pause_key).await?
        {
            if wait > self.limits.max_wait {
                return Err(FloodError::Paused(wait));
            }
            tokio::time::sleep(wait).await;
        }
        let result = call.await;
        if let Err(RequestError::RetryAfter(after)) = &result
            && self.enabled()
        {
            pause::pause(conn, &pause_key, after.duration()).await?;
        }
        Ok(result)
    }
}
