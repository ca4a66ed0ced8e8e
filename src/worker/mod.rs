//! The webhook worker: takes updates from Telegram (through Nginx), runs the bot's behaviour,
//! writes to the primary and answers only once the effects are durable.
//!
//! This module builds the process — its route (`route.rs`) and its loops (the chat-turn waker,
//! one outbox sender per bot, the webhook watcher) — and owns nothing else: what an update does
//! is `bot`'s, how it is taken in turn is `intake`'s. A worker keeps no state of its own between
//! requests: what must survive lives in Postgres (posts, users) or Redis (turns, dialogues, the
//! user cache), so any worker can take any update and killing one loses nothing. It never calls
//! setWebhook or deleteWebhook.

mod answer;
mod dead_letter;
mod feed;
mod lead;
mod reconcile;
mod record;
mod route;
mod state;
mod webhook_watch;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::post;
use tokio_util::task::TaskTracker;

use crate::admin::{Health, Readiness};
use crate::bot::Services;
use crate::feed::publish::Publisher;
use crate::http::Server;
use crate::intake::dialogue::Dialogues;
use crate::intake::{Intake, IntakeConfig, Waker};
use crate::kv::{BotKeys, FeedKeys};
use crate::metrics::Metrics;
use crate::settings::WorkerSettings;
use crate::shutdown::CancellationToken;
use crate::store::user_cache::Users;
use crate::store::{self, PostWriter};
use crate::telegram::flood::Flood;
use crate::telegram::{self, Client, outbox};
use crate::{kv, telemetry};
use record::Recorder;
use state::{BotRuntime, WorkerState};

/// Binds a worker's listeners; `run_until_stopped` on the result serves.
pub async fn build(settings: WorkerSettings, metrics: Arc<Metrics>) -> anyhow::Result<Server> {
    let db = store::pool(&settings.database_url, settings.db_pool_size)?;
    kv::check_credentials(&settings.redis_url, crate::settings::REDIS_URL).await?;
    let redis = kv::pool(&settings.redis_url, settings.db_pool_size * 2)?;
    let waker = Arc::new(Waker::default());
    let bots = Arc::new(bots(&settings, &waker)?);
    for config in &settings.bots {
        metrics.zero_bot(config.name.as_str());
    }
    metrics.zero_results(&metrics.user_cache, &["hit", "miss"]);
    watch_pools(&metrics, &db, &redis);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight));
    metrics.webhook_max_in_flight.set(settings.max_in_flight as i64);
    metrics.on_scrape({
        let (in_flight, max) = (in_flight.clone(), settings.max_in_flight);
        move |metrics| metrics.webhook_in_flight.set((max - in_flight.available_permits()) as i64)
    });
    let services = Arc::new(services(&settings, &db, &metrics));
    let state = WorkerState {
        bots: bots.clone(),
        services: services.clone(),
        redis: Arc::new(kv::Shared::new(redis.clone())),
        metrics: metrics.clone(),
        max_attempts: settings.max_attempts,
        tasks: TaskTracker::new(),
        in_flight,
        max_body_bytes: settings.max_body_bytes,
        recorder: recorder(&settings)?,
    };
    let tasks = state.tasks.clone();
    let router = Router::new()
        .route("/webhook/{bot}", post(route::receive))
        .layer(axum::middleware::from_fn(telemetry::request_context))
        .with_state(state);
    let background = start_loops(&settings, &bots, &services, &redis, waker)?;
    let readiness = readiness(db, redis);
    let server =
        Server::bind("worker", settings.listen, router, &settings.common, metrics, readiness, tasks).await?;
    Ok(server.cancel_on_stop(background))
}

/// Each configured bot's client and intake, by name.
fn bots(settings: &WorkerSettings, waker: &Arc<Waker>) -> anyhow::Result<HashMap<String, Arc<BotRuntime>>> {
    let prefix = &settings.redis_prefix;
    let config = IntakeConfig {
        lease: settings.chat_lease,
        max_wait: settings.max_wait,
        hold: settings.chat_hold,
        remember: std::time::Duration::from_secs(24 * 3600),
    };
    let mut bots = HashMap::new();
    for bot in &settings.bots {
        let keys = BotKeys::new(prefix, bot.id);
        let intake = Intake { keys: keys.clone(), deployment: prefix.clone(), config, waker: waker.clone() };
        let api = telegram::bot(&bot.token, &settings.telegram_api_url)?;
        let client = Arc::new(Client { config: bot.clone(), api, keys });
        bots.insert(bot.name.as_str().to_owned(), Arc::new(BotRuntime { client, intake }));
    }
    Ok(bots)
}

fn services(settings: &WorkerSettings, db: &deadpool_postgres::Pool, metrics: &Arc<Metrics>) -> Services {
    let feed_keys = Arc::new(FeedKeys::new(&settings.redis_prefix));
    Services {
        db: db.clone(),
        metrics: metrics.clone(),
        users: Arc::new(Users::new(db.clone(), settings.user_cache_ttl, metrics.clone())),
        dialogues: Dialogues { ttl: settings.dialogue_ttl },
        flood: Arc::new(Flood { limits: settings.flood, metrics: metrics.clone() }),
        posts: PostWriter::start(db.clone(), metrics.clone()),
        publisher: Publisher::start(feed_keys.clone(), settings.feed_stream_len),
        feed_keys,
    }
}

/// Records every update received, when asked to (`BOTFLEET_RECORD_PATH`).
fn recorder(settings: &WorkerSettings) -> anyhow::Result<Option<Arc<Recorder>>> {
    let Some(path) = &settings.record_path else { return Ok(None) };
    let recorder = Recorder::open(path)
        .with_context(|| format!("opening {} ({})", path.display(), crate::settings::RECORD_PATH))?;
    Ok(Some(Arc::new(recorder)))
}

/// Starts the worker's loops; they stop when the returned token is cancelled.
fn start_loops(
    settings: &WorkerSettings,
    bots: &Arc<HashMap<String, Arc<BotRuntime>>>,
    services: &Services,
    redis: &kv::Pool,
    waker: Arc<Waker>,
) -> anyhow::Result<CancellationToken> {
    let background = CancellationToken::new();
    let client = kv::Client::open(&settings.redis_url)?;
    tokio::spawn(waker.run(client.clone(), settings.redis_prefix.clone(), background.clone()));
    let memory = kv::watch_memory("state", redis.clone(), services.metrics.clone(), background.clone());
    tokio::spawn(memory);
    let config = outbox::OutboxConfig {
        claim_after: settings.outbox_claim_after,
        max_deliveries: settings.outbox_max_deliveries,
    };
    for bot in bots.values() {
        let sender = outbox::Sender {
            bot: bot.client.clone(),
            db: services.db.clone(),
            users: services.users.clone(),
            flood: services.flood.clone(),
            metrics: services.metrics.clone(),
            config,
            contents: Default::default(),
        };
        tokio::spawn(sender.run(client.clone(), background.clone()));
    }
    let clients: Vec<_> = bots.values().map(|bot| bot.client.clone()).collect();
    let stores = (services.db.clone(), redis.clone());
    let free_rate = services.flood.limits.per_bot;
    tokio::spawn(feed::feed(clients.clone(), stores.clone(), free_rate, background.clone()));
    let reconciling = reconcile::reconcile(
        clients,
        stores,
        services.metrics.clone(),
        settings.reconcile,
        background.clone(),
    );
    tokio::spawn(reconciling);
    if let Some(every) = settings.webhook_watch {
        let clients = bots.values().map(|bot| bot.client.clone()).collect();
        let watch =
            webhook_watch::watch(clients, redis.clone(), services.metrics.clone(), every, background.clone());
        tokio::spawn(watch);
    }
    Ok(background)
}

/// Ready while Postgres and Redis answer.
fn readiness(db: deadpool_postgres::Pool, redis: kv::Pool) -> Readiness {
    Readiness::new(move || {
        let (db, redis) = (db.clone(), redis.clone());
        async move {
            let (db_ok, redis_ok) = tokio::join!(store::ping(&db), kv::ping(&redis));
            vec![("postgres", Health::of(db_ok)), ("redis", Health::of(redis_ok))]
        }
    })
}

/// Samples the worker's Postgres and Redis pools at every scrape.
fn watch_pools(metrics: &Metrics, db: &deadpool_postgres::Pool, redis: &kv::Pool) {
    let (db, redis) = (db.clone(), redis.clone());
    metrics.watch_pool("postgres", move || db.status());
    metrics.watch_pool("redis", move || redis.status());
}
