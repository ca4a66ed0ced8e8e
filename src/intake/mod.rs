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
//! An update is known by what it is, not only by its `update_id` (which Telegram may reuse
//! after a week of silence): Redis remembers a 16-bit fingerprint of each handled update's
//! identity, and an id that comes back as another update is handled as new (counted, logged).
//!
//! An update holds its chat from its start until it is handled or dead-lettered: if it fails, or
//! its worker dies or stalls, the chat's later updates are answered 503 at once (Telegram
//! redelivers them later) until it comes back, so that a chat's updates take effect in
//! `update_id` order whatever fails (`intake_end.lua`). The hold lasts `hold` at most (each
//! failed attempt starts it again): Redis may lose the write that ends it after Telegram was
//! answered, and then nothing comes back to end it.
//!
//! A worker that lost its turn (the lease expired in a stall, or Redis failed over) stops: the
//! handling is dropped once a renewal finds the lease gone, and every durable effect first checks
//! [`Turn::fence`], which fails once the lease may have expired. So two workers never both apply
//! effects for one chat.
//!
//! Redis is the fast path only: the Postgres unique constraints are what make a redelivery
//! after a Redis flush harmless.

use std::pin::{Pin, pin};

use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kv::{BotKeys, Conn, scripts, turns_channel};
use crate::random::rand_u64;

pub mod dialogue;
mod turn;
mod waker;

use crate::types::UpdateId;
use turn::ReadValues;
pub use turn::{Begin, LeaseLost, ReadAhead, Turn};
pub use waker::Waker;

/// How a worker waits for a chat's turn.
#[derive(Debug, Clone, Copy)]
pub struct IntakeConfig {
    /// Lease length; renewed every third of it while the update is handled.
    pub lease: Duration,
    /// Longest wait for a chat's turn before answering 503 (Telegram then redelivers).
    pub max_wait: Duration,
    /// Longest a failed update holds its chat's later updates back.
    pub hold: Duration,
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
    #[error("the chat's update {0} failed and is redelivered first")]
    Held(UpdateId),
}

impl From<redis::RedisError> for IntakeError {
    fn from(e: redis::RedisError) -> Self {
        IntakeError::Unavailable(e.into())
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
    /// `identity` is what the update is (`bot::identity`): the same for every delivery of it.
    pub async fn begin(
        &self,
        conn: &mut Conn,
        (update_id, identity): (UpdateId, &str),
        chat: &str,
        read_ahead: Option<ReadAhead>,
    ) -> Result<Begin, IntakeError> {
        let token = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        let (handled_key, handled_bit) = self.keys.handled(chat, update_id);
        let fingerprint = fingerprint(identity);
        let [lease_key, queue_key, waiters_key, hold_key] = self.keys.chat_turn(chat);
        let notify = self.waker.waiting(&lease_key);
        let started = Instant::now();
        let mut poll = Duration::from_millis(2);
        loop {
            let asked = Instant::now();
            // Listen before asking, so that a release right after the answer is not missed.
            let mut woken = pin!(notify.notified());
            woken.as_mut().enable();
            let mut script = scripts::INTAKE_BEGIN.key(&handled_key);
            script.key(&lease_key).key(&queue_key).key(&waiters_key).key(&hold_key);
            if let Some(keys) = &read_ahead {
                script.key(&keys.user).key(&keys.dialogue);
            }
            let answer: Vec<Option<String>> = script
                .arg(update_id)
                .arg(&token)
                .arg(self.config.lease.as_millis() as u64)
                .arg((MAX_POLL * 5).as_millis() as u64)
                .arg(handled_bit)
                .arg(fingerprint)
                .arg(self.config.hold.as_millis() as u64)
                .invoke_async(conn)
                .await?;
            let verdict = answer.first().cloned().flatten();
            match verdict.as_deref() {
                Some("done") => return Ok(Begin::Done),
                Some("held") => {
                    let held = answer.get(1).cloned().flatten().and_then(|id| id.parse().ok());
                    return Err(IntakeError::Held(held.unwrap_or(update_id)));
                }
                Some(verdict @ ("go" | "reused")) => {
                    let reused = verdict == "reused";
                    let read = read_values(read_ahead, answer);
                    return Ok(Begin::Go(Box::new(Turn {
                        token,
                        update_id,
                        handled: (handled_key, handled_bit, fingerprint),
                        keys: [lease_key, queue_key, hold_key],
                        read,
                        reused,
                        valid_until: std::sync::Mutex::new(self.valid_until(asked)),
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
    /// Once a renewal finds the lease gone, `work` is dropped where it stands.
    pub async fn hold<T>(
        &self,
        conn: &Conn,
        turn: &Turn,
        mut work: Pin<&mut impl Future<Output = T>>,
    ) -> Result<T, LeaseLost> {
        loop {
            tokio::select! {
                // After a stall (a stopped process), the overdue renewal goes first.
                biased;
                () = tokio::time::sleep(self.config.lease / 3) => {
                    let asked = Instant::now();
                    match renew(conn.clone(), turn, self.config.lease).await {
                        Some(true) => turn.renewed(self.valid_until(asked)),
                        Some(false) => return Err(LeaseLost),
                        // Not known: the fence's deadline decides.
                        None => {}
                    }
                }
                output = &mut work => return Ok(output),
            }
        }
    }

    /// Until when a lease set at `asked` is surely still ours: its length after the moment the
    /// request went out, less a fifth for clock drift and the time an effect takes to land.
    fn valid_until(&self, asked: Instant) -> Instant {
        asked + self.config.lease - self.config.lease / 5
    }

    /// Ends the turn: `handled` marks the update done (never handled again); otherwise it is
    /// left for Telegram's redelivery. Either way the chat's next update may go.
    pub async fn end(&self, conn: &mut Conn, turn: Box<Turn>, handled: bool) -> Result<(), IntakeError> {
        let [lease_key, queue_key, hold_key] = &turn.keys;
        let held: i64 = scripts::INTAKE_END
            .key(&turn.handled.0)
            .key(lease_key)
            .key(queue_key)
            .key(hold_key)
            .arg(&turn.token)
            .arg(if handled { "done" } else { "retry" })
            .arg(self.config.remember.as_millis() as u64)
            .arg(turns_channel(&self.deployment))
            .arg(lease_key)
            .arg(turn.handled.1)
            .arg(turn.handled.2)
            .arg(turn.update_id)
            .arg(self.config.hold.as_millis() as u64)
            .invoke_async(conn)
            .await?;
        if held == 0 {
            tracing::warn!(lease = %lease_key, "a chat's turn expired while its update was handled");
        }
        Ok(())
    }

    /// Counts a failed attempt at `update_id`; returns how many there were.
    pub async fn count_failure(&self, conn: &mut Conn, update_id: UpdateId) -> Result<u64, IntakeError> {
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

/// A 16-bit fingerprint of an update's identity, never 0 (0 marks an id not handled).
pub fn fingerprint(identity: &str) -> u16 {
    let digest = Sha256::digest(identity.as_bytes());
    u16::from_be_bytes([digest[0], digest[1]]).max(1)
}

/// Pairs the read-ahead keys with the values `intake_begin` returned after "go".
fn read_values(keys: Option<ReadAhead>, answer: Vec<Option<String>>) -> ReadValues {
    let Some(keys) = keys else {
        return ReadValues::default();
    };
    let mut values = answer.into_iter().skip(1);
    let user = values.next().flatten();
    ReadValues { user: Some((keys.user, user)), dialogue: Some((keys.dialogue, values.collect())) }
}

/// Renews the turn's lease: whether it is still ours, if Redis could tell.
async fn renew(mut conn: Conn, turn: &Turn, lease: Duration) -> Option<bool> {
    let renewed: Result<i64, _> = scripts::LEASE_RENEW
        .key(turn.lease_key())
        .arg(&turn.token)
        .arg(lease.as_millis() as u64)
        .invoke_async(&mut conn)
        .await;
    match renewed {
        Ok(renewed) => Some(renewed == 1),
        Err(e) => {
            tracing::warn!(error = %e, "renewing a chat's turn failed");
            None
        }
    }
}
