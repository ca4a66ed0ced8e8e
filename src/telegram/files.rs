//! The bots' files for the media proxy (`GET /api/media/{id}`): a client per bot whose media an
//! API node may fetch, and what keeps readers from turning the proxy against the bot.
//!
//! Readers are anyone on the internet, so the proxy asks Telegram as little as it can: a file's
//! path (`getFile`) is remembered in Redis for an hour — Telegram keeps it valid at least that
//! long — so each file costs one `getFile` an hour across the cluster whatever the requests
//! (concurrent misses on a node make one call); a node makes at most [`MAX_GET_FILE`] calls at
//! once; and a 429 met here pauses only the media proxy, never the bot's messages. The proxy
//! waits out the bot's own pause too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use teloxide_core::RequestError;
use teloxide_core::prelude::Requester;
use teloxide_core::types::FileId;
use tokio::sync::Semaphore;

use super::pause;
use crate::keyed::Keyed;
use crate::kv::{self, BotKeys};
use crate::settings::BotConfig;
use crate::types::BotId;

/// `getFile` calls a node makes at once; more wait for none of them (503).
pub const MAX_GET_FILE: usize = 8;
/// How long a file's path is remembered (Telegram keeps it valid at least an hour).
const PATH_TTL: Duration = Duration::from_secs(3600);

/// One bot whose media this node serves: its client and settings, and its Redis keys.
pub struct FileBot {
    pub api: teloxide_core::Bot,
    pub config: BotConfig,
    keys: BotKeys,
}

/// Why a file's path could not be had.
#[derive(Debug)]
pub enum FileError {
    /// Telegram asks to wait (this many seconds), or this node makes as many calls as it may.
    Wait(u64),
    /// Telegram would not give it (logged).
    Failed(RequestError),
}

/// The Bot API clients of the bots whose media this node may fetch, by bot id.
pub struct FileBots {
    bots: HashMap<BotId, FileBot>,
    redis: kv::Shared,
    calls: Semaphore,
    /// One `getFile` per file at a time on this node.
    flights: Keyed<tokio::sync::Mutex<()>>,
}

impl FileBots {
    pub fn new(
        configs: &[BotConfig],
        api_url: &url::Url,
        prefix: &str,
        redis: deadpool_redis::Pool,
    ) -> anyhow::Result<Arc<Self>> {
        let mut bots = HashMap::new();
        for config in configs {
            let (api, keys) = (super::client::bot(&config.token, api_url)?, BotKeys::new(prefix, config.id));
            bots.insert(config.id, FileBot { api, config: config.clone(), keys });
        }
        let (redis, calls) = (kv::Shared::new(redis), Semaphore::new(MAX_GET_FILE));
        Ok(Arc::new(Self { bots, redis, calls, flights: Keyed::default() }))
    }

    /// Bot `id`, if this node serves its media.
    pub fn bot(&self, id: BotId) -> Option<&FileBot> {
        self.bots.get(&id)
    }

    /// The path of `file_id` (named `unique` for the cache: the same file whatever its id),
    /// from Redis, or from `getFile` at most once an hour per file.
    pub async fn path(&self, bot: &FileBot, file_id: FileId, unique: &str) -> Result<String, FileError> {
        let key = bot.keys.media_path(unique);
        if let Some(path) = self.cached(&key).await {
            return Ok(path);
        }
        let flight = self.flights.acquire(&key);
        let _only_one = flight.lock().await;
        if let Some(path) = self.cached(&key).await {
            return Ok(path);
        }
        let [bot_pause, media_pause] = [bot.keys.flood_pause(), bot.keys.media_pause()];
        for pause_key in [&bot_pause, &media_pause] {
            if let Some(seconds) = self.paused(pause_key).await {
                return Err(FileError::Wait(seconds));
            }
        }
        let Ok(_call) = self.calls.try_acquire() else {
            return Err(FileError::Wait(1));
        };
        let file = match bot.api.get_file(file_id).await {
            Ok(file) => file,
            Err(RequestError::RetryAfter(after)) => {
                // The proxy's own 429: media waits, the bot's messages do not.
                if let Ok(mut conn) = self.redis.get().await {
                    let _ = pause::pause(&mut conn, &media_pause, after.duration()).await;
                }
                return Err(FileError::Wait(after.duration().as_secs().max(1)));
            }
            Err(e) => return Err(FileError::Failed(e)),
        };
        if let Ok(mut conn) = self.redis.get().await {
            let _: Result<(), _> = conn.set_ex(&key, &file.path, PATH_TTL.as_secs()).await;
        }
        Ok(file.path)
    }

    async fn cached(&self, key: &str) -> Option<String> {
        let mut conn = self.redis.get().await.ok()?;
        conn.get(key).await.inspect_err(|_| self.redis.reset()).ok()?
    }

    /// Seconds the calls under `pause_key` stay paused after a 429, if they are (`None` also
    /// when Redis cannot tell: a 429 then pauses only this call).
    async fn paused(&self, pause_key: &str) -> Option<u64> {
        let mut conn = self.redis.get().await.ok()?;
        let wait = pause::paused(&mut conn, pause_key).await.inspect_err(|_| self.redis.reset()).ok()??;
        Some(wait.as_secs() + 1)
    }
}
