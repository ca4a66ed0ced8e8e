//! The user cache (invariant 5): Redis, five-minute TTL, refreshed from the primary on a miss.
//!
//! Every update from a user passes here. A hit with an unchanged profile costs one Redis GET; a
//! miss, or a changed profile, upserts the row (only when it changed) and refills the cache.
//! Inside a process, concurrent misses for one user make one database call (single-flight).
//! A ban deletes the entry, so every worker sees it on the very next update.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::sql::StoreError;
use super::users::{self, Profile};
use crate::keyed::Keyed;
use crate::kv::{BotKeys, Conn};
use crate::metrics::Metrics;
use crate::types::{BotId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedUser {
    pub profile: Profile,
    pub is_banned: bool,
}

pub struct Users {
    pub db: Pool,
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
    /// One lock per user key: concurrent misses make one database call.
    flights: Keyed<tokio::sync::Mutex<()>>,
}

fn unavailable(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Unavailable(e.into())
}

impl Users {
    pub fn new(db: Pool, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self { db, ttl, metrics, flights: Keyed::default() }
    }

    /// The user as stored, with their row brought up to date; tells whether they are banned.
    /// `seen` is the cache entry under `key` if the caller read it already (with its turn).
    pub async fn touch(
        &self,
        conn: &mut Conn,
        key: &str,
        seen: Option<Option<String>>,
        (bot_id, user_id): (BotId, UserId),
        profile: Profile,
    ) -> Result<CachedUser, StoreError> {
        let seen = match seen {
            Some(seen) => seen,
            None => conn.get(key).await.map_err(unavailable)?,
        };
        if let Some(user) = matching(seen, &profile) {
            self.metrics.user_cache.with_label_values(&["hit"]).inc();
            return Ok(user);
        }
        let flight = self.flights.acquire(key);
        let _only_one = flight.lock().await;
        // Whoever held the flight before us may have filled the cache.
        if let Some(user) = matching(conn.get(key).await.map_err(unavailable)?, &profile) {
            self.metrics.user_cache.with_label_values(&["hit"]).inc();
            return Ok(user);
        }
        self.metrics.user_cache.with_label_values(&["miss"]).inc();
        let started = std::time::Instant::now();
        let is_banned = users::upsert_user(&self.db, bot_id, user_id, &profile).await?;
        self.metrics
            .db_query_seconds
            .with_label_values(&["upsert_user"])
            .observe(started.elapsed().as_secs_f64());
        let user = CachedUser { profile, is_banned };
        let json = serde_json::to_string(&user).map_err(|e| StoreError::Other(e.into()))?;
        let () = conn.set_ex(key, json, self.ttl.as_secs()).await.map_err(unavailable)?;
        Ok(user)
    }

    /// Telegram refused a message to the user for good: broadcasts skip them until they write
    /// again, when their next message misses the cache (dropped here) and the upsert clears the
    /// mark.
    pub async fn unreachable(
        &self,
        conn: &mut Conn,
        keys: &BotKeys,
        (bot_id, user_id): (BotId, UserId),
    ) -> Result<(), StoreError> {
        users::mark_unreachable(&self.db, bot_id, user_id).await?;
        let () = conn.del(keys.user(user_id)).await.map_err(unavailable)?;
        Ok(())
    }

    /// Forgets the cached user at once (after a ban, an unban or a profile change).
    pub async fn invalidate(
        &self,
        conn: &mut Conn,
        keys: &BotKeys,
        user_id: UserId,
    ) -> Result<(), StoreError> {
        let () = conn.del(keys.user(user_id)).await.map_err(unavailable)?;
        Ok(())
    }
}

/// The cached user in `json`, if present and their profile is still `profile`.
fn matching(json: Option<String>, profile: &Profile) -> Option<CachedUser> {
    json.and_then(|json| serde_json::from_str::<CachedUser>(&json).ok())
        .filter(|user| user.profile == *profile)
}
