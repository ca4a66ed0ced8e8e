//! The bots' files for the media proxy (`GET /api/media/{id}`): a client per bot whose media an
//! API node may fetch, honouring the cluster-wide pause after a 429.

use std::collections::HashMap;
use std::sync::Arc;

use super::pause;
use crate::kv::{self, BotKeys};
use crate::settings::BotConfig;
use crate::types::BotId;

/// The Bot API clients of the bots whose media this node may fetch, by bot id, with the key of
/// each bot's pause after a 429 (kept by every process of the cluster, see the worker's flood
/// control).
pub struct FileBots {
    bots: HashMap<BotId, (teloxide_core::Bot, BotConfig, String)>,
    redis: kv::Shared,
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
            let pause = BotKeys::new(prefix, config.id).flood_pause();
            bots.insert(config.id, (super::client::bot(&config.token, api_url)?, config.clone(), pause));
        }
        Ok(Arc::new(Self { bots, redis: kv::Shared::new(redis) }))
    }

    /// Seconds the bot's calls stay paused after a 429, if they are (`None` also when Redis
    /// cannot tell: a 429 then pauses only this call).
    pub async fn paused(&self, pause_key: &str) -> Option<u64> {
        let mut conn = self.redis.get().await.ok()?;
        let wait = pause::paused(&mut conn, pause_key).await.inspect_err(|_| self.redis.reset()).ok()??;
        Some(wait.as_secs() + 1)
    }
}

impl FileBots {
    /// The client of bot `id`, its settings and the key of its pause, if this node serves it.
    pub fn bot(&self, id: BotId) -> Option<&(teloxide_core::Bot, BotConfig, String)> {
        self.bots.get(&id)
    }

    /// Pauses the bot's calls in every process after a 429 (when Redis can be reached).
    pub async fn pause(&self, pause_key: &str, after: std::time::Duration) {
        if let Ok(mut conn) = self.redis.get().await {
            let _ = pause::pause(&mut conn, pause_key, after).await;
        }
    }
}
