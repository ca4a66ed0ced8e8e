//! `botfleet webhook set|info|delete`: the one deploy-time call that points Telegram at the
//! cluster. Workers never call setWebhook or deleteWebhook: a replica shutting down would cut
//! off every other replica.

use teloxide_core::payloads::SetWebhookSetters;
use teloxide_core::prelude::Requester;
use teloxide_core::types::AllowedUpdate;
use url::Url;

use crate::settings::{BotConfig, WebhookSettings};
use crate::telegram::{self, redact};

/// The update kinds the bot handles; Telegram sends only these.
pub const ALLOWED_UPDATES: &[AllowedUpdate] =
    &[AllowedUpdate::Message, AllowedUpdate::EditedMessage, AllowedUpdate::CallbackQuery];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Set,
    Info,
    Delete,
}

impl Command {
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "set" => Some(Self::Set),
            "info" => Some(Self::Info),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
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
        Command::Set => {
            let base = settings.webhook_url.as_ref().ok_or_else(|| {
                anyhow::anyhow!("setting {} is required for `webhook set`", crate::settings::WEBHOOK_URL)
            })?;
            let url = bot_webhook_url(base, bot)?;
            api.set_webhook(url.clone())
                .secret_token(bot.webhook_secret.expose().to_owned())
                .max_connections(settings.max_connections)
                .allowed_updates(ALLOWED_UPDATES.to_vec())
                .await?;
            Ok(format!("webhook set to {url}"))
        }
        Command::Info => {
            let info = api.get_webhook_info().await?;
            let url = info.url.map_or_else(|| "(none)".to_owned(), |u| u.to_string());
            Ok(format!(
                "url={url} pending_update_count={} max_connections={} last_error={}",
                info.pending_update_count,
                info.max_connections.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                info.last_error_message.as_deref().unwrap_or("-"),
            ))
        }
        Command::Delete => {
            api.delete_webhook().await?;
            Ok("webhook deleted".to_owned())
        }
    }
}

/// `<base>/<bot name>`: one URL per bot under the cluster's webhook base URL.
pub fn bot_webhook_url(base: &Url, bot: &BotConfig) -> anyhow::Result<Url> {
    let base = base.as_str().trim_end_matches('/');
    Ok(Url::parse(&format!("{base}/{}", bot.name))?)
}
