//! Redis: the connection pool. Keys of a deployment all start with its prefix
//! (`BOTFLEET_REDIS_PREFIX`), then the bot's id, so deployments and bots never collide.

use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{Config, Pool, Runtime};

use crate::settings::Secret;

/// How long a request may wait for a Redis connection before Redis counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool that connects lazily: building it never fails because Redis is down.
pub fn pool(url: &Secret, size: usize) -> anyhow::Result<Pool> {
    Config::from_url(url.expose())
        .builder()
        .context("configuring the redis pool")?
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

/// The key prefix of one bot: `<deployment prefix>:<bot id>:`.
pub fn bot_prefix(deployment: &str, bot_id: i64) -> String {
    format!("{deployment}:{bot_id}:")
}
