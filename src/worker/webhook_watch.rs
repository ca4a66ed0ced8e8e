//! What Telegram says of each bot's webhook, as metrics: one worker of the cluster at a time
//! (whoever holds a Redis lease) asks getWebhookInfo every interval and exports the updates
//! waiting for delivery and the age and text of the last delivery error. The others stay
//! quiet, so the figures are not multiplied by the number of workers; if the holder dies, its
//! lease expires and another worker takes over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use teloxide_core::prelude::Requester;

use crate::kv::{self, Conn, scripts};
use crate::metrics::Metrics;
use crate::random::rand_u64;
use crate::shutdown::CancellationToken;
use crate::telegram::Client;

pub async fn watch(
    bots: Vec<Arc<Client>>,
    redis: deadpool_redis::Pool,
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let me = format!("{:016x}", rand_u64());
    let mut tick = tokio::time::interval(every);
    // The last error message exported per bot, to replace its series when it changes.
    let mut messages: HashMap<String, String> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(mut conn) = kv::conn(&redis).await else { continue };
        for bot in &bots {
            match holds(&mut conn, &bot.keys.webhook_watcher(), &me, every * 3).await {
                Ok(true) => export(bot, &metrics, &mut messages).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "webhook watcher lease"),
            }
        }
    }
}

/// Takes or keeps the lease `key` for `me`; whether `me` holds it now.
async fn holds(conn: &mut Conn, key: &str, me: &str, lease: Duration) -> redis::RedisResult<bool> {
    let ms = lease.as_millis() as u64;
    let taken: Option<String> =
        redis::cmd("SET").arg(key).arg(me).arg("NX").arg("PX").arg(ms).query_async(conn).await?;
    if taken.is_some() {
        return Ok(true);
    }
    let renewed: i64 = scripts::LEASE_RENEW.key(key).arg(me).arg(ms).invoke_async(conn).await?;
    Ok(renewed == 1)
}

async fn export(bot: &Client, metrics: &Metrics, messages: &mut HashMap<String, String>) {
    let name = bot.config.name.as_str();
    let info = match bot.api.get_webhook_info().await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(bot = name, error = %e, "getWebhookInfo failed");
            return;
        }
    };
    metrics.webhook_pending_updates.with_label_values(&[name]).set(i64::from(info.pending_update_count));
    if let Some(old) = messages.remove(name) {
        let _ = metrics.webhook_last_error.remove_label_values(&[name, &old]);
    }
    match (info.last_error_date, info.last_error_message) {
        (Some(date), Some(message)) => {
            let age = (chrono::Utc::now() - date).num_milliseconds() as f64 / 1000.0;
            metrics.webhook_last_error_age_seconds.with_label_values(&[name]).set(age.max(0.0));
            metrics.webhook_last_error.with_label_values(&[name, &message]).set(1);
            messages.insert(name.to_owned(), message);
        }
        _ => {
            let _ = metrics.webhook_last_error_age_seconds.remove_label_values(&[name]);
        }
    }
}
