//! What Telegram says of each bot's webhook, as metrics: one worker of the cluster at a time
//! (see `lead`) asks getWebhookInfo every interval and exports the updates waiting for delivery
//! and the age and text of the last delivery error, so the figures are not multiplied by the
//! number of workers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use teloxide_core::prelude::Requester;

use super::lead::Leader;
use crate::kv::BotKeys;
use crate::metrics::Metrics;
use crate::shutdown::CancellationToken;
use crate::telegram::Client;

pub async fn watch(
    bots: Vec<Arc<Client>>,
    redis: crate::kv::Pool,
    metrics: Arc<Metrics>,
    every: Duration,
    shutdown: CancellationToken,
) {
    // The last error message exported per bot, to replace its series when it changes.
    let mut messages: HashMap<String, String> = HashMap::new();
    let mut leader = Leader::new(BotKeys::webhook_watcher, every);
    while let Some((_, led)) = leader.next(&redis, &bots, &shutdown).await {
        for bot in led {
            export(&bot, &metrics, &mut messages).await;
        }
    }
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
