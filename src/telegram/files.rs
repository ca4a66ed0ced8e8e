//! The bots' files for the media proxy (`GET /api/media/{id}`): a client per bot whose media an
//! API node may fetch, and what keeps readers from turning the proxy against the bot.
//!
//! Readers are anyone on the internet, so the proxy asks Telegram as little as it can: a file's
//! path (`getFile`) is remembered in the cache Redis for an hour — Telegram keeps it valid at
//! least that long — so each file costs one `getFile` an hour across the cluster whatever the
//! requests (concurrent misses make one call: one per node at a time, and a node that finds
//! another fetching the file waits up to [`FETCH_WAIT`] for its answer); a node makes at most
//! [`MAX_GET_FILE`] calls at once; and a 429 met here pauses only the media proxy, never the
//! bot's messages. The proxy waits out the bot's own pause too (both pauses live in the state
//! Redis, with the workers' flood control).

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
/// How long a node waits for another node's `getFile` of the same file before calling itself.
pub const FETCH_WAIT: Duration = Duration::from_secs(5);
/// How often it looks meanwhile.
const FETCH_POLL: Duration = Duration::from_millis(50);

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
    /// The state Redis: the bot's pause and the media pause.
    redis: kv::Shared,
    /// The cache Redis: files' paths, and who is fetching one.
    cache: kv::Shared,
    calls: Semaphore,
    /// One `getFile` per file at a time on this node.
    flights: Keyed<tokio::sync::Mutex<()>>,
}

impl FileBots {
    pub fn new(
        configs: &[BotConfig],
        api_url: &url::Url,
        prefix: &str,
        redis: kv::Pool,
        cache: kv::Pool,
    ) -> anyhow::Result<Arc<Self>> {
        let mut bots = HashMap::new();
        for config in configs {
            let (api, keys) = (super::client::bot(&config.token, api_url)?, BotKeys::new(prefix, config.id));
            bots.insert(config.id, FileBot { api, config: config.clone(), keys });
        }
        let (redis, cache) = (kv::Shared::new(redis), kv::Shared::new(cache));
        let (calls, flights) = (Semaphore::new(MAX_GET_FILE), Keyed::default());
        Ok(Arc::new(Self { bots, redis, cache, calls, flights }))
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
        if let Some(path) = self.fetched_elsewhere(&key).await {
            return Ok(path);
        }
        let Ok(_call) = self.calls.try_acquire() else {
            self.release(&key).await;
            return Err(FileError::Wait(1));
        };
        let fetched = bot.api.get_file(file_id).await;
        if let Ok(file) = &fetched
            && let Ok(mut conn) = self.cache.get().await
        {
            let _: Result<(), _> = conn.set_ex(&key, &file.path, PATH_TTL.as_secs()).await;
        }
        self.release(&key).await;
        let file = match fetched {
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
        Ok(file.path)
    }

    async fn cached(&self, key: &str) -> Option<String> {
        let mut conn = self.cache.get().await.ok()?;
        conn.get(key).await.inspect_err(|_| self.cache.reset()).ok()?
    }

    /// The path, once the node fetching it right now has it (within `FETCH_WAIT`), or as stored
    /// since this node looked; `None` when no node is fetching it (this one now is: it claimed
    /// the fetch), or the other node failed or took too long.
    async fn fetched_elsewhere(&self, key: &str) -> Option<String> {
        let mut conn = self.cache.get().await.ok()?;
        let ms = FETCH_WAIT.as_millis() as u64;
        let claim = fetching(key);
        let claimed: Option<String> = redis::cmd("SET")
            .arg(&claim)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await
            .ok()?;
        if claimed.is_some() {
            // Whoever fetched it before may have finished since this node looked: paths are
            // stored before claims end, so a path missing now is missing.
            let path = self.cached(key).await;
            if path.is_some() {
                self.release(key).await;
            }
            return path;
        }
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(FETCH_POLL).await;
            let (path, still): (Option<String>, bool) =
                redis::pipe().get(key).exists(&claim).query_async(&mut conn).await.ok()?;
            if path.is_some() || !still {
                return path;
            }
        }
        None
    }

    /// Ends this node's claim on fetching `key`'s file (after its path went to Redis, if it did).
    async fn release(&self, key: &str) {
        if let Ok(mut conn) = self.cache.get().await {
            let _: Result<(), _> = conn.del(fetching(key)).await;
        }
    }

    /// Seconds the calls under `pause_key` stay paused after a 429, if they are (`None` also
    /// when Redis cannot tell: a 429 then pauses only this call).
    async fn paused(&self, pause_key: &str) -> Option<u64> {
        let mut conn = self.redis.get().await.ok()?;
        let wait = pause::paused(&mut conn, pause_key).await.inspect_err(|_| self.redis.reset()).ok()??;
        Some(wait.as_secs() + 1)
    }
}

/// The key that says a node is fetching the file whose path goes into `key`.
fn fetching(key: &str) -> String {
    format!("{key}:fetching")
}
