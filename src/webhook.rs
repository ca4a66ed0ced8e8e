//! `botfleet webhook set|info|delete`: the one deploy-time call that points Telegram at the
//! cluster. Workers never call setWebhook or deleteWebhook: a replica shutting down would cut
//! off every other replica.
//!
//! `set` is idempotent: it calls setWebhook only when Telegram's webhook differs from the one
//! wanted (URL, `max_connections`, `allowed_updates`, and the secret, whose SHA-256 it keeps
//! in Redis since Telegram never shows it), so every deploy may run it. A 429 is waited out,
//! and "Conflict: terminated by other setWebhook" (two deploys at once) is tried again: both
//! deploys want the same webhook, so both succeed.

use std::collections::HashSet;
use std::future::IntoFuture;
use std::time::Duration;

use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use teloxide_core::payloads::SetWebhookSetters;
use teloxide_core::prelude::Requester;
use teloxide_core::types::{AllowedUpdate, WebhookInfo};
use teloxide_core::{ApiError, RequestError};
use url::Url;

use crate::kv::BotKeys;
use crate::settings::{BotConfig, WebhookSettings};
use crate::telegram::{self, redact};

/// Attempts at one Bot API call: the first, and those after a 429 or a conflict.
const ATTEMPTS: u32 = 4;

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
        Command::Set => set(&api, settings, bot).await,
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

async fn set(
    api: &teloxide_core::Bot,
    settings: &WebhookSettings,
    bot: &BotConfig,
) -> anyhow::Result<String> {
    let base = settings.webhook_url.as_ref().ok_or_else(|| {
        anyhow::anyhow!("setting {} is required for `webhook set`", crate::settings::WEBHOOK_URL)
    })?;
    let url = bot_webhook_url(base, bot)?;
    let secret = bot.webhook_secret.expose();
    let fingerprint = format!("{:x}", Sha256::digest(secret.as_bytes()));
    let key = BotKeys::new(&settings.redis_prefix, bot.id).webhook_secret();
    let mut redis = match &settings.redis_url {
        Some(redis_url) => {
            Some(redis::Client::open(redis_url.expose())?.get_multiplexed_async_connection().await?)
        }
        None => None,
    };
    let info = patiently(|| api.get_webhook_info()).await?;
    let known_secret = match redis.as_mut() {
        Some(conn) => conn.get::<_, Option<String>>(&key).await?.as_deref() == Some(fingerprint.as_str()),
        None => false,
    };
    if known_secret && is_set(&info, &url, settings.max_connections) {
        return Ok(format!("webhook already set to {url}"));
    }
    patiently(|| {
        api.set_webhook(url.clone())
            .secret_token(secret.to_owned())
            .max_connections(settings.max_connections)
            .allowed_updates(ALLOWED_UPDATES.to_vec())
    })
    .await?;
    if let Some(conn) = redis.as_mut() {
        let () = conn.set(&key, &fingerprint).await?;
    }
    Ok(format!("webhook set to {url}"))
}

/// Whether Telegram's webhook is `url` with our other settings (the secret aside).
fn is_set(info: &WebhookInfo, url: &Url, max_connections: u8) -> bool {
    let allowed: HashSet<_> = info.allowed_updates.iter().flatten().collect();
    let wanted: HashSet<_> = ALLOWED_UPDATES.iter().collect();
    info.url.as_ref() == Some(url)
        && info.max_connections == Some(u32::from(max_connections))
        && allowed == wanted
}

/// Makes `call`, waiting out a 429's `retry_after` and, after a conflict with another
/// setWebhook, a growing pause; [`ATTEMPTS`] at most.
async fn patiently<T, R>(call: impl Fn() -> R) -> Result<T, RequestError>
where
    R: IntoFuture<Output = Result<T, RequestError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = call().await;
        let wait = match &result {
            Err(RequestError::RetryAfter(after)) => after.duration(),
            Err(RequestError::Api(ApiError::Unknown(message))) if message.starts_with("Conflict") => {
                Duration::from_millis(200 * u64::from(attempt))
            }
            _ => return result,
        };
        if attempt == ATTEMPTS {
            return result;
        }
        tracing::warn!(wait_ms = wait.as_millis() as u64, "Telegram asked to wait; trying again");
        tokio::time::sleep(wait).await;
    }
}

/// `<base>/<bot name>`: one URL per bot under the cluster's webhook base URL.
pub fn bot_webhook_url(base: &Url, bot: &BotConfig) -> anyhow::Result<Url> {
    let base = base.as_str().trim_end_matches('/');
    Ok(Url::parse(&format!("{base}/{}", bot.name))?)
}
