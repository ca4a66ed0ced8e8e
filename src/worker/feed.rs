//! The broadcasts' feeder: one worker of the cluster at a time (see `lead`) queues each bot's
//! broadcasts' recipients, a few seconds of sending ahead (`telegram::outbox::feed`); another
//! takes over within a second if it dies.

use std::sync::Arc;
use std::time::Duration;

use super::lead::Leader;
use crate::kv::BotKeys;
use crate::shutdown::CancellationToken;
use crate::telegram::{Client, outbox};

/// How often the feeder tops the queues up: a fifth of the seconds they hold ahead.
const EVERY: Duration = Duration::from_millis(250);

/// Feeds the bots' broadcasts until `shutdown`; `free_rate` is what a bot may send a second
/// outside paid broadcasts (`None`: no limit).
pub async fn feed(
    bots: Vec<Arc<Client>>,
    (db, redis): (deadpool_postgres::Pool, crate::kv::Pool),
    free_rate: Option<f64>,
    shutdown: CancellationToken,
) {
    let mut leader = Leader::new(BotKeys::feeder, EVERY);
    while let Some((mut conn, led)) = leader.next(&redis, &bots, &shutdown).await {
        for bot in led {
            if let Err(e) = outbox::feed(&db, &mut conn, &bot, free_rate).await {
                tracing::warn!(bot = %bot.config.name, error = %e, "queueing broadcasts' recipients; next time");
            }
        }
    }
}
