//! Redis: the connection pool. Keys of a deployment all start with its prefix
//! (`BOTFLEET_REDIS_PREFIX`), then the bot's id, so deployments and bots never collide.

pub mod acl;

use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{Manager, Pool, Runtime};

use crate::settings::Secret;
use crate::types::{BotId, ChatId, PostId, UpdateId, UserId};

/// How long a request may wait for a Redis connection before Redis counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection every task of an update shares: commands of concurrent tasks are pipelined on
/// it. Taken from the pool once per update (the pool checks it with a PING on the way out), then
/// cloned freely.
pub type Conn = redis::aio::MultiplexedConnection;

/// A live connection from the pool, detached from it (the pool keeps its own handle).
pub async fn conn(pool: &Pool) -> Result<Conn, deadpool_redis::PoolError> {
    Ok((*pool.get().await?).clone())
}

/// One multiplexed connection shared by every request of a process, taken from the pool once
/// and replaced after an error: the pool's checkout costs a PING round trip, too much for
/// work done on every read.
pub struct Shared {
    pool: Pool,
    conn: std::sync::Mutex<Option<Conn>>,
}

impl Shared {
    pub fn new(pool: Pool) -> Self {
        Self { pool, conn: std::sync::Mutex::new(None) }
    }

    pub async fn get(&self) -> Result<Conn, deadpool_redis::PoolError> {
        if let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(conn);
        }
        let conn = self::conn(&self.pool).await?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// After an error on the shared connection: the next `get` takes a fresh one.
    pub fn reset(&self) {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A client for a Redis URL, TLS included (`rediss://`, see [`crate::tls`]).
pub fn client(url: &Secret) -> anyhow::Result<redis::Client> {
    crate::tls::redis(url.expose())
}

/// A pool that connects lazily: building it never fails because Redis is down.
pub fn pool(url: &Secret, size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::new(client(url)?.get_connection_info().clone())?;
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .context("building the redis pool")
}

/// Whether Redis answers PING.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
        Err(_) => false,
    }
}

/// Refuses to go on with credentials Redis refuses, with an error naming the setting `key`; a
/// Redis not reachable yet is no error here (pools connect when they can).
pub async fn check_credentials(url: &Secret, key: &str) -> anyhow::Result<()> {
    let client = client(url)?;
    match tokio::time::timeout(POOL_TIMEOUT, client.get_multiplexed_async_connection()).await {
        Ok(Err(e)) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
            anyhow::bail!("setting {key}: Redis refused its user or password ({e})")
        }
        _ => Ok(()),
    }
}

/// How often [`watch_memory`] samples a Redis.
const MEMORY_EVERY: Duration = Duration::from_secs(15);

/// Samples a Redis's memory (`INFO memory`) into `botfleet_redis_memory_bytes{redis=name}` now
/// and every 15 s until `stop`: the alert on the state Redis nearing its maxmemory reads it.
pub async fn watch_memory(
    name: &'static str,
    pool: Pool,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    stop: crate::shutdown::CancellationToken,
) {
    loop {
        if let Ok(mut conn) = pool.get().await
            && let Ok(info) = redis::cmd("INFO").arg("memory").query_async::<String>(&mut conn).await
        {
            for (field, kind) in [("used_memory", "used"), ("maxmemory", "max")] {
                if let Some(bytes) = info_field(&info, field) {
                    metrics.redis_memory.with_label_values(&[name, kind]).set(bytes);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(MEMORY_EVERY) => {}
        }
    }
}

/// A number from `INFO`'s `field:value` lines.
fn info_field(info: &str, field: &str) -> Option<i64> {
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
}

/// Takes or keeps the lease `key` for `me` (a role one process of the cluster plays at a time);
/// whether `me` holds it now.
pub async fn hold_lease(conn: &mut Conn, key: &str, me: &str, lease: Duration) -> redis::RedisResult<bool> {
    let ms = lease.as_millis() as u64;
    let taken: Option<String> =
        redis::cmd("SET").arg(key).arg(me).arg("NX").arg("PX").arg(ms).query_async(conn).await?;
    if taken.is_some() {
        return Ok(true);
    }
    let renewed: i64 = scripts::LEASE_RENEW.key(key).arg(me).arg(ms).invoke_async(conn).await?;
    Ok(renewed == 1)
}

/// The key prefix of one bot: `<deployment prefix>:<bot id>:`.
pub fn bot_prefix(deployment: &str, bot_id: BotId) -> String {
    format!("{deployment}:{bot_id}:")
}

/// The Lua scripts, loaded once. `Script::invoke_async` runs EVALSHA and loads the script
/// again if Redis has forgotten it (after a restart or `SCRIPT FLUSH`).
pub mod scripts {
    use std::sync::LazyLock;

    use redis::Script;

    macro_rules! script {
        ($name:ident, $file:literal) => {
            pub static $name: LazyLock<Script> =
                LazyLock::new(|| Script::new(include_str!(concat!("../../lua/", $file))));
        };
    }

    script!(INTAKE_BEGIN, "intake_begin.lua");
    script!(INTAKE_END, "intake_end.lua");
    script!(LEASE_RENEW, "lease_renew.lua");
    script!(DIALOGUE_SAVE, "dialogue_save.lua");
    script!(PUBLISH_POST, "publish_post.lua");
    script!(FEED_REMOVED, "feed_removed.lua");
    script!(FEED_STATE, "feed_state.lua");
    script!(FLOOD_TAKE, "flood_take.lua");
    script!(OUTBOX_ADD, "outbox_add.lua");
}

/// The key and bit of one id among bitmaps of 65,536 consecutive ids (8 KiB each): marking a
/// day of updates or posts at thousands per second takes a few thousand keys, not hundreds of
/// millions.
fn bit(base: &str, id: i64) -> (String, i64) {
    (format!("{base}:{}", id >> 16), id & 0xFFFF)
}

/// Key names of one bot, all under `<deployment prefix>:<bot id>:`.
#[derive(Debug, Clone)]
pub struct BotKeys {
    prefix: String,
}

impl BotKeys {
    pub fn new(deployment: &str, bot_id: BotId) -> Self {
        Self { prefix: bot_prefix(deployment, bot_id) }
    }

    /// Where the update is marked handled: a 16-bit slot (the fingerprint of what was handled
    /// under that id) among 65,536 consecutive ids, 128 KiB per key.
    pub fn handled(&self, update_id: UpdateId) -> (String, i64) {
        bit(&format!("{}hf", self.prefix), update_id.0)
    }

    /// How many attempts at the update failed.
    pub fn attempts(&self, update_id: UpdateId) -> String {
        format!("{}att:{update_id}", self.prefix)
    }

    /// The chat's lease, waiting queue, waiter deadlines and hold (its failed update that later
    /// ones wait for): the per-chat turn.
    pub fn chat_turn(&self, chat: &str) -> [String; 4] {
        let base = format!("{}c:{chat}", self.prefix);
        [format!("{base}:lease"), format!("{base}:q"), format!("{base}:w"), format!("{base}:hold")]
    }

    /// The bot's send schedule, one chat's, and the bot's pause after a 429 (`flood_take.lua`).
    pub fn flood(&self, chat_id: ChatId) -> [String; 3] {
        let base = format!("{}flood", self.prefix);
        [format!("{base}:bot"), format!("{base}:c:{chat_id}"), self.flood_pause()]
    }

    /// Set for `retry_after` after a 429: every process waits it out before calling Telegram.
    pub fn flood_pause(&self) -> String {
        format!("{}flood:pause", self.prefix)
    }

    /// The media proxy's own pause after a 429 from `getFile` (the bot's messages do not wait it).
    pub fn media_pause(&self) -> String {
        format!("{}media:pause", self.prefix)
    }

    /// A file's path for the media proxy, by its `file_unique_id` (an hour).
    pub fn media_path(&self, unique_id: &str) -> String {
        format!("{}media:path:{unique_id}", self.prefix)
    }

    /// The outbox (a stream read by the group `senders`) and where dead messages go.
    pub fn outbox(&self) -> [String; 2] {
        [format!("{}outbox", self.prefix), format!("{}outbox:dead", self.prefix)]
    }

    /// Marks the message `id` as queued (`outbox_add.lua`).
    pub fn outbox_once(&self, id: &str) -> String {
        format!("{}outbox:once:{id}", self.prefix)
    }

    /// A broadcast's progress (a hash: `total`, `sent`, `chat`, `message`) and its
    /// cancellation mark.
    pub fn broadcast(&self, id: i64) -> [String; 2] {
        let base = format!("{}bc:{id}", self.prefix);
        [base.clone(), format!("{base}:cancelled")]
    }

    /// Which worker asks Telegram for the webhook's info (a lease).
    pub fn webhook_watcher(&self) -> String {
        format!("{}webhook:watcher", self.prefix)
    }

    /// Which worker rebuilds what Redis lost of the outbox (a lease).
    pub fn reconciler(&self) -> String {
        format!("{}outbox:reconciler", self.prefix)
    }

    /// A fingerprint (SHA-256, hex) of the secret the webhook was last set with.
    pub fn webhook_secret(&self) -> String {
        format!("{}webhook:secret-sha256", self.prefix)
    }

    pub fn dialogue(&self, chat_id: ChatId) -> String {
        format!("{}d:{chat_id}", self.prefix)
    }

    pub fn user(&self, user_id: UserId) -> String {
        format!("{}user:{user_id}", self.prefix)
    }
}

/// Key names of the deployment's public feed (shared by all its bots).
#[derive(Debug, Clone)]
pub struct FeedKeys {
    pub stream: String,
    pub generation: String,
    /// Counts removals (deleted posts, bans): the version of pages after a cursor.
    pub removals: String,
    /// The primary's WAL position after the latest publish or removal committed: a replica that
    /// has not replayed this far lags (ids are not commit order, so no post id can tell).
    pub wal_position: String,
    pub channel: String,
    prefix: String,
}

impl FeedKeys {
    pub fn new(deployment: &str) -> Self {
        Self {
            stream: format!("{deployment}:feed:stream"),
            generation: format!("{deployment}:feed:gen"),
            removals: format!("{deployment}:feed:removals"),
            wal_position: format!("{deployment}:feed:lsn"),
            channel: format!("{deployment}:feed:live"),
            prefix: deployment.to_owned(),
        }
    }

    /// One of the keys feed pages are cached in (`feed::cache`).
    pub fn page_slot(&self, slot: u64) -> String {
        format!("{}:feed:page:{slot}", self.prefix)
    }

    /// Where a post is marked published to the stream, so that it goes out once.
    pub fn published(&self, post_id: PostId) -> (String, i64) {
        bit(&format!("{}:feed:pub", self.prefix), post_id.0)
    }
}

/// The channel on which a released chat turn wakes the workers waiting for it.
pub fn turns_channel(deployment: &str) -> String {
    format!("{deployment}:chat-turns")
}

#[cfg(test)]
mod tests {
    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:0\r\n";
        assert_eq!(super::info_field(info, "used_memory"), Some(1_048_576));
        assert_eq!(super::info_field(info, "maxmemory"), Some(0));
        assert_eq!(super::info_field(info, "used_memory_peak"), None);
    }
}
