//! The Bot API client: teloxide's `Bot`, pointed at Telegram or at the fake, and what may be
//! logged of its errors.

use std::time::Duration;

use serde::Serialize;
use teloxide_core::Bot;
use teloxide_core::requests::{JsonRequest, Payload};
use teloxide_core::types::MessageId;

use url::Url;

use crate::kv::BotKeys;
use crate::settings::{BotConfig, Secret};

/// One bot as the sending path knows it.
pub struct Client {
    pub config: BotConfig,
    pub api: Bot,
    /// Its Redis keys: flood schedules, pause, outbox.
    pub keys: BotKeys,
}

/// Longest a single Bot API call may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for one bot. Cheap to clone; clones share the connection pool. Its `User-Agent`
/// names this process, so that the fake Telegram's log tells which process made each call.
pub fn bot(token: &Secret, api_url: &Url) -> anyhow::Result<Bot> {
    let agent = format!("botfleet/{} (pid {})", env!("CARGO_PKG_VERSION"), std::process::id());
    let client =
        teloxide_core::net::default_reqwest_settings().timeout(CALL_TIMEOUT).user_agent(agent).build()?;
    Ok(Bot::with_client(token.expose(), client).set_api_url(api_url.clone()))
}

/// `sendMessage` as teloxide sends it, answered with the one thing the bot uses of the message
/// it sent, its id: teloxide's whole `Message` (with the quoted message inside) took longer to
/// parse than the rest of the answer (`loadtest/README.md`, W1).
#[derive(Serialize)]
#[serde(transparent)]
pub struct SendMessage(pub teloxide_core::payloads::SendMessage);

impl Payload for SendMessage {
    /// Read from the sent message's `message_id`; the rest of it is skipped.
    type Output = MessageId;
    const NAME: &'static str = "SendMessage";
}

impl SendMessage {
    pub fn request(self, bot: &Bot) -> JsonRequest<Self> {
        JsonRequest::new(bot.clone(), self)
    }
}

/// `text` with every occurrence of the token replaced, for logs and error reports.
pub fn redact(text: &str, token: &Secret) -> String {
    text.replace(token.expose(), "<bot-token>")
}
