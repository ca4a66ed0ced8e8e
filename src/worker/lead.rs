//! Roles one worker of the cluster plays at a time for each bot (asking Telegram for the
//! webhook's info, rebuilding the outbox): whoever holds the role's Redis lease does the work
//! every interval; the others stay quiet, and one takes over if the holder dies.

use std::sync::Arc;
use std::time::Duration;

use crate::kv::{self, BotKeys, Conn};
use crate::random::rand_u64;
use crate::shutdown::CancellationToken;
use crate::telegram::Client;

/// This process's claim on one role of every bot.
pub struct Leader {
    me: String,
    /// The role's lease key of a bot.
    role: fn(&BotKeys) -> String,
    every: Duration,
    tick: tokio::time::Interval,
}

impl Leader {
    pub fn new(role: fn(&BotKeys) -> String, every: Duration) -> Self {
        let me = format!("{:016x}", rand_u64());
        Self { me, role, every, tick: tokio::time::interval(every) }
    }

    /// Waits for the next interval, then returns a Redis connection and the bots whose role
    /// this process holds now; `None` once `shutdown` comes.
    pub async fn next(
        &mut self,
        redis: &kv::Pool,
        bots: &[Arc<Client>],
        shutdown: &CancellationToken,
    ) -> Option<(Conn, Vec<Arc<Client>>)> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                _ = self.tick.tick() => {}
            }
            let Ok(mut conn) = redis.get().await else { continue };
            let mut led = Vec::new();
            for bot in bots {
                match kv::hold_lease(&mut conn, &(self.role)(&bot.keys), &self.me, self.every * 3).await {
                    Ok(true) => led.push(bot.clone()),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(bot = %bot.config.name, error = %e, "a role's lease"),
                }
            }
            return Some((conn, led));
        }
    }
}
