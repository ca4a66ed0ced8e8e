//! `botfleet webhook set`: the webhook and the command menu, each set only when Telegram's
//! differs from what is wanted.

use std::collections::HashSet;

use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use teloxide_core::payloads::SetWebhookSetters;
use teloxide_core::prelude::Requester;
use teloxide_core::types::{AllowedUpdate, WebhookInfo};
use url::Url;

use super::patiently::patiently;
use crate::bot::commands;
use crate::kv::BotKeys;
use crate::settings::{BotConfig, WebhookSettings};

/// The update kinds the bot handles; Telegram sends only these.
pub const ALLOWED_UPDATES: &[AllowedUpdate] =
    &[AllowedUpdate::Message, AllowedUpdate::EditedMessage, AllowedUpdate::CallbackQuery];

pub async fn set(
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
            Some(crate::kv::Client::open(redis_url)?.connect(std::time::Duration::from_secs(5)).await?)
        }
        None => None,
    };
    let info = patiently(|| api.get_webhook_info()).await?;
    let known_secret = match redis.as_mut() {
        Some(conn) => conn.get::<_, Option<String>>(&key).await?.as_deref() == Some(fingerprint.as_str()),
        None => false,
    };
    let menu = register_commands(api).await?;
    if known_secret && is_set(&info, &url, settings.max_connections) {
        return Ok(format!("webhook already set to {url}; {menu}"));
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
    Ok(format!("webhook set to {url}; {menu}"))
}

/// Whether Telegram's webhook is `url` with our other settings (the secret aside).
fn is_set(info: &WebhookInfo, url: &Url, max_connections: u8) -> bool {
    let allowed: HashSet<_> = info.allowed_updates.iter().flatten().collect();
    let wanted: HashSet<_> = ALLOWED_UPDATES.iter().collect();
    info.url.as_ref() == Some(url)
        && info.max_connections == Some(u32::from(max_connections))
        && allowed == wanted
}

/// Registers the bot's command menu unless Telegram shows it already; says which.
async fn register_commands(api: &teloxide_core::Bot) -> anyhow::Result<&'static str> {
    let wanted = commands::menu();
    if patiently(|| api.get_my_commands()).await? == wanted {
        return Ok("commands already registered");
    }
    patiently(|| api.set_my_commands(wanted.clone())).await?;
    Ok("commands registered")
}

/// `<base>/<bot name>`: one URL per bot under the cluster's webhook base URL.
pub fn bot_webhook_url(base: &Url, bot: &BotConfig) -> anyhow::Result<Url> {
    let base = base.as_str().trim_end_matches('/');
    Ok(Url::parse(&format!("{base}/{}", bot.name))?)
}
