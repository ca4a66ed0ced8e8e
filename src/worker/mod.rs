//! The webhook worker: takes updates from Telegram (through Nginx), runs the bot's behaviour,
//! writes to the primary and answers only once the effects are durable.
//!
//! A worker keeps no state of its own between requests: anything that must survive lives in
//! Postgres (or, from later issues, Redis), so any worker can take any update and killing one
//! loses nothing. It never calls setWebhook or deleteWebhook.

mod bot;
mod store;
mod webhook;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::http::Server;
use crate::metrics::Metrics;
use crate::settings::{BotConfig, WorkerSettings};
use crate::{db, kv, telegram};

/// One configured bot with its Bot API client.
pub(crate) struct BotRuntime {
    pub config: BotConfig,
    pub api: teloxide_core::Bot,
}

/// What every request handler shares.
#[derive(Clone)]
pub(crate) struct WorkerState {
    pub bots: Arc<HashMap<String, Arc<BotRuntime>>>,
    pub db: deadpool_postgres::Pool,
    pub metrics: Arc<Metrics>,
    /// Update handling runs in tasks tracked here, so a caller that hangs up cannot cut the
    /// work in half and a draining process waits for it.
    pub tasks: TaskTracker,
    pub max_body_bytes: usize,
}

/// Binds a worker's listeners; `run_until_stopped` on the result serves.
pub async fn build(settings: WorkerSettings, metrics: Arc<Metrics>) -> anyhow::Result<Server> {
    let db = db::pool(&settings.database_url, settings.db_pool_size)?;
    let redis = kv::pool(&settings.redis_url, settings.db_pool_size)?;
    let mut bots = HashMap::new();
    for config in &settings.bots {
        let api = telegram::bot(&config.token, &settings.telegram_api_url)?;
        let runtime = BotRuntime { config: config.clone(), api };
        bots.insert(config.name.as_str().to_owned(), Arc::new(runtime));
    }
    let tasks = TaskTracker::new();
    let state = WorkerState {
        bots: Arc::new(bots),
        db: db.clone(),
        metrics: metrics.clone(),
        tasks: tasks.clone(),
        max_body_bytes: settings.max_body_bytes,
    };
    let router = Router::new().route("/webhook/{bot}", post(webhook::receive)).with_state(state);
    let readiness = Readiness::new(move || {
        let (db, redis) = (db.clone(), redis.clone());
        async move {
            let (db_ok, redis_ok) = tokio::join!(db::ping(&db), kv::ping(&redis));
            vec![("postgres", db_ok), ("redis", redis_ok)]
        }
    });
    Server::bind("worker", settings.listen, router, &settings.common, metrics, readiness, tasks).await
}
