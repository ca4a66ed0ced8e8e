//! `botfleet webhook set|info|delete`: the one deploy-time call that points Telegram at the
//! cluster. Workers never call setWebhook or deleteWebhook: a replica shutting down would cut
//! off every other replica.
//!
//! `set` is idempotent: it calls setWebhook only when Telegram's webhook differs from the one
//! wanted (URL, `max_connections`, `allowed_updates`, and the secret, whose SHA-256 it keeps
//! in Redis since Telegram never shows it), so every deploy may run it. A 429 is waited out,
//! and "Conflict: terminated by other setWebhook" (two deploys at once) is tried again: both
//! deploys want the same webhook, so both succeed. `set` also registers the bot's command menu
//! with `setMyCommands`, again only when Telegram's differs.

mod patiently;
mod set;

use teloxide_core::prelude::Requester;

use crate::settings::{BotConfig, WebhookSettings};
use crate::telegram::{self, redact};
use patiently::patiently;
pub use set::{ALLOWED_UPDATES, bot_webhook_url};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Set,
    Info,
    Delete,
}

/// Runs `command` for every configured bot and returns one line of output per bot.
pub async fn run(command: Command, settings: &WebhookSettings) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for bot in &settings.bots {
        let line = run_one(command, settings, bot)
            .await
            .map_err(|e| anyhow::anyhow!("bot {}: {}", bot.name, redact(&format!("{e:#}"), &bot.token)))?;
        lines.push(format!("{}: {line}", bot.name));
    }
    Ok(lines)
}

async fn run_one(command: Command, settings: &WebhookSettings, bot: &BotConfig) -> anyhow::Result<String> {
    let api = telegram::bot(&bot.token, &settings.telegram_api_url)?;
    match command {
        Command::Set => set::set(&api, settings, bot).await,
        Command::Info => {
            let info = patiently(|| api.get_webhook_info()).await?;
            let url = info.url.map_or_else(|| "(none)".to_owned(), |u| u.to_string());
            Ok(format!(
                "url={url} pending_update_count={} max_connections={} last_error={}",
                info.pending_update_count,
                info.max_connections.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                info.last_error_message.as_deref().unwrap_or("-"),
            ))
        }
        Command::Delete => {
            patiently(|| api.delete_webhook()).await?;
            Ok("webhook deleted".to_owned())
        }
    }
}
