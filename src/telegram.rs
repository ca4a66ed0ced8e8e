//! The Bot API client: teloxide's `Bot`, pointed at Telegram or at the fake.
//!
//! The token lives inside the URL of every call, so nothing here may print a request URL;
//! teloxide already strips the token from its network errors and [`redact`] is the belt to
//! those braces for anything we log.

use std::time::Duration;

use serde::Serialize;
use teloxide_core::Bot;
use teloxide_core::requests::{JsonRequest, Payload};
use teloxide_core::types::MessageId;

use crate::kv::Conn;
use url::Url;

use crate::settings::Secret;

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

/// How long the bot's calls stay paused after a 429 that any process of the cluster met
/// (`pause_key`: `BotKeys::flood_pause`), if they are.
pub async fn paused(conn: &mut Conn, pause_key: &str) -> redis::RedisResult<Option<Duration>> {
    let ms: i64 = redis::cmd("PTTL").arg(pause_key).query_async(conn).await?;
    Ok((ms > 0).then(|| Duration::from_millis(ms.unsigned_abs())))
}

/// Pauses every process's calls of the bot for `after` (never shortening a longer pause).
pub async fn pause(conn: &mut Conn, pause_key: &str, after: Duration) -> redis::RedisResult<()> {
    let ms = after.as_millis().max(1) as u64;
    tracing::warn!(retry_after_ms = ms, "Telegram answered 429: pausing the bot's calls in every process");
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(pause_key)
        .arg(1)
        .arg("PX")
        .arg(ms)
        .arg("NX")
        .ignore()
        .cmd("PEXPIRE")
        .arg(pause_key)
        .arg(ms)
        .arg("GT")
        .ignore()
        .query_async(conn)
        .await
}
