//! Exactly-once intake and per-chat order across the cluster (invariants 2 and 3).
//!
//! Before an update is handled, [`Intake::begin`] asks Redis (one Lua script) whether it was
//! handled already and whether its chat's turn is free; the same round trip brings the cached
//! user and the dialogue state the handler reads first. Updates of one chat are handled one at
//! a time by whichever worker holds the chat's lease; those waiting at the same moment go in
//! `update_id` order. A waiting worker sleeps until the holder's release wakes it (Redis
//! pub/sub) or a short poll interval passes, and gives up after `max_wait`, answering 503 with
//! `Retry-After` so that Telegram redelivers later. The lease expires if its holder dies, and is
//! renewed while a slow update is still being handled.
//!
//! Redis is the fast path only: the Postgres unique constraints are what make a redelivery
//! after a Redis flush harmless.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::dialogue::Fields;
use super::keyed::Keyed;
use crate::kv::{BotKeys, Conn, scripts, turns_channel};
use crate::shutdown::CancellationToken;

/// How a worker waits for a chat's turn.
#[derive(Debug, Clone, Copy)]
pub struct IntakeConfig {
    /// Lease length; renewed every third of it while the update is handled.
    pub lease: Duration,
    /// Longest wait for a chat's turn before answering 503 (Telegram then redelivers).
    pub max_wait: Duration,
    /// How long a handled update is remembered in Redis.
    pub remember: Duration,
}

/// Longest sleep between two asks for a turn when no wake-up arrives.
const MAX_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] anyhow::Error),
    #[error("the chat's turn did not come within {0:?}")]
    TimedOut(Duration),
}

impl From<redis::RedisError> for IntakeError {
    fn from(e: redis::RedisError) -> Self {
        IntakeError::Unavailable(e.into())
    }
}

/// The keys the handler reads first: the sender's cached user and the chat's dialogue.
pub struct ReadAhead {
    pub user: String,
    pub dialogue: String,
}

/// Their values, read under the turn: only the turn's holder writes a chat's dialogue, so the
/// state stays current until the turn ends.
#[derive(Debug, Default)]
struct ReadValues {
    user: Option<(String, Option<String>)>,
    dialogue: Option<(String, Fields)>,
}

pub enum Begin {
    /// Handled before: acknowledge without doing anything.
    Done,
    /// The chat's turn is ours until [`Turn::end`].
    Go(Box<Turn>),
}

/// This worker's turn at one update of one chat.
pub struct Turn {
    token: String,
    /// The bitmap key and bit that mark the update handled.
    handled: (String, i64),
    lease_key: String,
    queue_key: String,
    read: ReadValues,
}

impl Turn {
    /// The token that fences this attempt's writes (see `dialogue_save.lua`).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn lease_key(&self) -> &str {
        &self.lease_key
    }

    /// The cached user under `key` as read with the turn, if it was.
    pub fn user_read(&self, key: &str) -> Option<Option<String>> {
        self.read.user.as_ref().filter(|(k, _)| k == key).map(|(_, value)| value.clone())
    }

    /// The dialogue under `key` as read with the turn, if it was.
    pub fn dialogue_read(&self, key: &str) -> Option<Fields> {
        self.read.dialogue.as_ref().filter(|(k, _)| k == key).map(|(_, fields)| fields.clone())
    }
}

/// Wakes local waiters when a chat's turn is released anywhere in the cluster.
#[derive(Default)]
pub struct Waker {
    /// One notifier per chat lease key, shared by every local waiter of that chat.
    waiting: Keyed<Notify>,
}

impl Waker {
    fn wake(&self, lease_key: &str) {
        if let Some(notify) = self.waiting.get(lease_key) {
            notify.notify_waiters();
        }
    }

    /// Subscribes to released turns until `shutdown`, reconnecting after errors. Missed
    /// messages only cost a waiter one poll interval.
    pub async fn run(
        self: Arc<Self>,
        client: redis::Client,
        deployment: String,
        shutdown: CancellationToken,
    ) {
        let channel = turns_channel(&deployment);
        loop {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(lease_key) = message.get_payload::<String>() {
                        self.wake(&lease_key);
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = subscribed => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "chat-turn subscription lost; resubscribing");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

pub struct Intake {
    pub keys: BotKeys,
    pub deployment: String,
    pub config: IntakeConfig,
    pub waker: Arc<Waker>,
}

impl Intake {
    /// Waits for `chat`'s turn at `update_id`, or finds the update already handled.
    pub async fn begin(
        &self,
        conn: &mut Conn,
        update_id: i64,
        chat: &str,
        read_ahead: Option<ReadAhead>,
    ) -> Result<Begin, IntakeError> {
        let token = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        let (handled_key, handled_bit) = self.keys.handled(update_id);
        let [lease_key, queue_key, waiters_key] = self.keys.chat_turn(chat);
        let notify = self.waker.waiting.acquire(&lease_key);
        let started = Instant::now();
        let mut poll = Duration::from_millis(2);
        loop {
            // Listen before asking, so that a release right after the answer is not missed.
            let mut woken = pin!(notify.notified());
            woken.as_mut().enable();
            let mut script = scripts::INTAKE_BEGIN.key(&handled_key);
            script.key(&lease_key).key(&queue_key).key(&waiters_key);
            if let Some(keys) = &read_ahead {
                script.key(&keys.user).key(&keys.dialogue);
            }
            let answer: Vec<Option<String>> = script
                .arg(update_id)
                .arg(&token)
                .arg(self.config.lease.as_millis() as u64)
                .arg((MAX_POLL * 5).as_millis() as u64)
                .arg(handled_bit)
                .invoke_async(conn)
                .await?;
            match answer.first().and_then(Option::as_deref) {
                Some("done") => return Ok(Begin::Done),
                Some("go") => {
                    let read = read_values(read_ahead, answer);
                    return Ok(Begin::Go(Box::new(Turn {
                        token,
                        handled: (handled_key, handled_bit),
                        lease_key,
                        queue_key,
                        read,
                    })));
                }
                _ => {}
            }
            let waited = started.elapsed();
            if waited >= self.config.max_wait {
                return Err(IntakeError::TimedOut(self.config.max_wait));
            }
            let nap = poll.min(self.config.max_wait - waited);
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(nap) => {}
            }
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    /// Runs `work` (the update's handling) while keeping the turn: the lease is renewed every
    /// third of its length for as long as `work` runs, in the same task (no task per update).
    pub async fn hold<T>(&self, conn: &Conn, turn: &Turn, mut work: Pin<&mut impl Future<Output = T>>) -> T {
        let mut renewing = true;
        loop {
            tokio::select! {
                output = &mut work => return output,
                () = tokio::time::sleep(self.config.lease / 3), if renewing => {
                    renewing = renew(conn.clone(), turn, self.config.lease).await;
                }
            }
        }
    }

    /// Ends the turn: `handled` marks the update done (never handled again); otherwise it is
    /// left for Telegram's redelivery. Either way the chat's next update may go.
    pub async fn end(&self, conn: &mut Conn, turn: Box<Turn>, handled: bool) -> Result<(), IntakeError> {
        let held: i64 = scripts::INTAKE_END
            .key(&turn.handled.0)
            .key(&turn.lease_key)
            .key(&turn.queue_key)
            .arg(&turn.token)
            .arg(if handled { "done" } else { "retry" })
            .arg(self.config.remember.as_millis() as u64)
            .arg(turns_channel(&self.deployment))
            .arg(&turn.lease_key)
            .arg(turn.handled.1)
            .invoke_async(conn)
            .await?;
        if held == 0 {
            tracing::warn!(lease = %turn.lease_key, "a chat's turn expired while its update was handled");
        }
        Ok(())
    }

    /// Counts a failed attempt at `update_id`; returns how many there were.
    pub async fn count_failure(&self, conn: &mut Conn, update_id: i64) -> Result<u64, IntakeError> {
        let key = self.keys.attempts(update_id);
        let (attempts,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .pexpire(&key, self.config.remember.as_millis() as i64)
            .ignore()
            .query_async(conn)
            .await?;
        Ok(attempts)
    }
}

/// Pairs the read-ahead keys with the values `intake_begin` returned after "go".
fn read_values(keys: Option<ReadAhead>, answer: Vec<Option<String>>) -> ReadValues {
    let Some(keys) = keys else {
        return ReadValues::default();
    };
    let mut values = answer.into_iter().skip(1);
    let user = values.next().flatten();
    ReadValues { user: Some((keys.user, user)), dialogue: Some((keys.dialogue, Fields::from_values(values))) }
}

/// Renews the turn's lease; false once it is no longer ours (renewing further is pointless).
async fn renew(mut conn: Conn, turn: &Turn, lease: Duration) -> bool {
    let renewed: Result<i64, _> = scripts::LEASE_RENEW
        .key(&turn.lease_key)
        .arg(&turn.token)
        .arg(lease.as_millis() as u64)
        .invoke_async(&mut conn)
        .await;
    match renewed {
        Ok(renewed) => renewed == 1,
        Err(e) => {
            tracing::warn!(error = %e, "renewing a chat's turn failed");
            true
        }
    }
}

/// A random number for tokens and jitter: unique per call, not a secret. Every `RandomState` is seeded
/// afresh from the process's random keys, so hashing nothing still gives a new number each time.
pub fn rand_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_do_not_repeat() {
        let tokens: std::collections::HashSet<u64> = (0..10_000).map(|_| super::rand_u64()).collect();
        assert_eq!(tokens.len(), 10_000);
    }
}
