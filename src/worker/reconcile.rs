//! The outbox's reconciler: one worker of the cluster at a time (see `lead`) queues again, every
//! interval, what Redis lost of each bot's outbox, from what Postgres journaled
//! (`telegram::outbox::rebuild`). Redis loses the last second of writes when it is killed, and
//! everything when it comes back empty: a moderator's review, a verdict, the tail of a
//! broadcast's queue.

use std::sync::Arc;
use std::time::Duration;

use super::lead::Leader;
use crate::kv::BotKeys;
use crate::metrics::Metrics;
use crate::shutdown::CancellationToken;
use crate::telegram::{Client, outbox};

pub async fn reconcile(
    bots: Vec<Arc<Client>>,
    (db, redis): (deadpool_postgres::Pool, crate::kv::Pool),
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut leader = Leader::new(BotKeys::reconciler, every);
    while let Some((mut conn, led)) = leader.next(&redis, &bots, &shutdown).await {
        for bot in led {
            let name = bot.config.name.as_str();
            match outbox::rebuild(&db, &mut conn, &bot).await {
                Ok(rebuilt) => {
                    if rebuilt != outbox::Rebuilt::default() {
                        tracing::warn!(bot = name, ?rebuilt, "queued again what Redis lost of the outbox");
                    }
                    metrics.outbox_rebuilt.with_label_values(&[name, "notice"]).inc_by(rebuilt.notices);
                    metrics.outbox_rebuilt.with_label_values(&[name, "recipient"]).inc_by(rebuilt.recipients);
                }
                Err(e) => tracing::warn!(bot = name, error = %e, "rebuilding the outbox failed; next time"),
            }
        }
    }
}
