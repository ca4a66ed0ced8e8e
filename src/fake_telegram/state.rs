//! What the fake remembers: the calls it took, the bots' webhooks and menus, its files, and the
//! faults it was told to play.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::limits::Limits;

/// One recorded Bot API call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Call {
    /// Order of arrival, from 1.
    pub seq: u64,
    pub bot_id: i64,
    pub method: String,
    /// The call's parameters, as JSON (uploaded files appear as the file_id they were given).
    pub params: Value,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The HTTP status the fake answered with.
    pub status: u16,
    /// The caller's `User-Agent`: which process made the call (botfleet's name their pid).
    #[serde(default)]
    pub client: String,
}

/// A call as the fake keeps it: its parameters as JSON text, not as a parsed tree, which took
/// ten times the memory and, while a load run's log grew by megabytes a second, a tenth of the
/// fake's CPU in page faults (`loadtest/README.md`). [`Call`] is what readers get.
pub(super) struct Recorded {
    pub(super) bot_id: i64,
    pub(super) method: String,
    pub(super) params: Box<str>,
    pub(super) at_ms: u64,
    pub(super) status: u16,
    pub(super) client: Box<str>,
}

impl Recorded {
    /// The call as readers see it; `seq` is its place in the log, from 1.
    pub(super) fn call(&self, seq: usize) -> Call {
        Call {
            seq: seq as u64,
            bot_id: self.bot_id,
            method: self.method.clone(),
            // The fake wrote this text from a JSON value: it parses.
            params: serde_json::from_str(&self.params).unwrap_or_default(),
            at_ms: self.at_ms,
            status: self.status,
            client: self.client.to_string(),
        }
    }
}

/// The webhook a bot registered with `setWebhook`.
#[derive(Debug, Clone, Default)]
pub struct Webhook {
    pub(super) url: String,
    /// The `secret_token` deliveries carry.
    pub(super) secret: String,
    pub(super) max_connections: u64,
    pub(super) allowed_updates: Vec<Value>,
    /// What getWebhookInfo reports of deliveries (see [`Fake::webhook_trouble`]).
    pub(super) pending: u64,
    pub(super) last_error: Option<(u64, String)>,
}

#[derive(Default)]
pub struct Inner {
    pub(super) calls: Vec<Recorded>,
    /// How many times the log was cleared (`POST /__fake/reset`).
    pub(super) resets: u64,
    pub(super) next_message_id: i64,
    pub(super) next_file: u64,
    /// file_id → (file_unique_id, bytes)
    pub(super) files: std::collections::HashMap<String, (String, Vec<u8>)>,
    pub(super) webhooks: std::collections::HashMap<i64, Webhook>,
    /// Each bot's command menu, as `setMyCommands` set it.
    pub(super) commands: std::collections::HashMap<i64, Value>,
    pub(super) limits: Limits,
    /// Chats whose user blocked the bot: sends to them get 403.
    pub(super) blocked: std::collections::HashSet<i64>,
    /// Calls of this method are answered only after this long (a slow Telegram); `true`: they
    /// are taken (recorded, and their effect made) at once, and only their answer waits.
    pub(super) delay: Option<(String, Duration, bool)>,
    /// The next calls of this method (this many) fail so, whatever their parameters and the
    /// limits.
    pub(super) fail_next: Option<(String, Failure, u32)>,
}

/// A failure the fake can be told to answer the next call of a method with.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    /// 429 with this `retry_after`, in seconds.
    TooManyRequests(u64),
    /// 409 "Conflict: terminated by other setWebhook", as when two deploys set it at once.
    Conflict,
    /// 500 "Internal Server Error", which Telegram answers now and then.
    ServerError,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
