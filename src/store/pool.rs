//! Connection pools. Workers reach the primary as the worker role (writes users/posts); API
//! nodes read replicas, and the primary as a fallback, as the read-only API role. Only
//! `botfleet migrate` uses the owner.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod, Runtime};

use crate::settings::Secret;

/// How long a request may wait for a connection, and a new connection may take, before the
/// database counts as unavailable (and the webhook answers 503 so Telegram redelivers).
const POOL_TIMEOUT: Duration = Duration::from_secs(3);

/// A pool that connects lazily: building it never fails because the database is down.
pub fn pool(url: &Secret, size: usize) -> anyhow::Result<Pool> {
    let crate::tls::Postgres { mut config, tls } = crate::tls::postgres(url.expose())?;
    config.connect_timeout(POOL_TIMEOUT);
    let manager =
        Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .queue_mode(QueueMode::Lifo)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(POOL_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .context("building a postgres pool")
}

/// One connection, driven in the background (for tools and tests; processes use pools).
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let crate::tls::Postgres { config, tls } = crate::tls::postgres(url)?;
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Whether the database answers a trivial query.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}
