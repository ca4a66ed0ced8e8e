//! The webhook worker: takes updates from Telegram (through Nginx), runs the bot's behaviour,
//! writes to the primary and answers only once the effects are durable.
//!
//! A worker keeps no state of its own between requests: what must survive lives in Postgres
//! (posts, users) or Redis (turns, dialogues, the user cache), so any worker can take any update
//! and killing one loses nothing. It never calls setWebhook or deleteWebhook.

mod batch;
mod bot;
mod broadcast;
mod dialogue;
mod flood;
mod group_commit;
mod intake;
mod keyed;
mod outbox;
mod posts;
mod publish;
mod record;
mod store;
mod users;
mod webhook;
mod webhook_watch;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::post;
use tokio_util::task::TaskTracker;

use crate::admin::{Health, Readiness};
use crate::http::Server;
use crate::kv::{BotKeys, FeedKeys};
use crate::metrics::Metrics;
use crate::settings::{BotConfig, WorkerSettings};
use crate::shutdown::CancellationToken;
use crate::{db, kv, telegram, telemetry};
use dialogue::Dialogues;
use flood::Flood;
use group_commit::PostWriter;
use intake::{Intake, IntakeConfig, Waker};
use publish::Publisher;
use users::Users;

/// For the fuzz targets (`crate::fuzz`).
pub(crate) use bot::{kind_name, turn_key};
pub(crate) use webhook::parse_update;

/// One configured bot with its Bot API client and Redis keys.
pub(crate) struct BotRuntime {
    pub config: BotConfig,
    pub api: teloxide_core::Bot,
    pub keys: BotKeys,
    pub intake: Intake,
}

/// What every request handler shares.
#[derive(Clone)]
pub(crate) struct WorkerState {
    pub bots: Arc<HashMap<String, Arc<BotRuntime>>>,
    pub db: deadpool_postgres::Pool,
    /// The Redis connection every update shares (multiplexed).
    pub redis: Arc<kv::Shared>,
    pub metrics: Arc<Metrics>,
    pub users: Arc<Users>,
    pub dialogues: Arc<Dialogues>,
    /// Every message the bot sends goes out through here, within Telegram's limits.
    pub flood: Arc<Flood>,
    /// New posts go to the primary through here, in batches.
    pub posts: PostWriter,
    pub feed_keys: Arc<FeedKeys>,
    /// Published posts go to the API nodes through here, in batches.
    pub publisher: Publisher,
    /// Failed attempts at one update before it is dead-lettered.
    pub max_attempts: u64,
    /// Update handling runs in tasks tracked here, so a caller that hangs up cannot cut the
    /// work in half and a draining process waits for it.
    pub tasks: TaskTracker,
    /// One permit per update being handled (`BOTFLEET_MAX_IN_FLIGHT`): when none is left the
    /// worker is overloaded and says so at once, rather than letting Telegram time out.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub max_body_bytes: usize,
    /// Records every update received, when asked to (`BOTFLEET_RECORD_PATH`).
    pub recorder: Option<Arc<record::Recorder>>,
}

/// Binds a worker's listeners; `run_until_stopped` on the result serves.
pub async fn build(settings: WorkerSettings, metrics: Arc<Metrics>) -> anyhow::Result<Server> {
    let db = db::pool(&settings.database_url, settings.db_pool_size)?;
    let redis = kv::pool(&settings.redis_url, settings.db_pool_size * 2)?;
    let prefix = &settings.redis_prefix;
    let waker = Arc::new(Waker::default());
    let intake_config = IntakeConfig {
        lease: settings.chat_lease,
        max_wait: settings.max_wait,
        remember: std::time::Duration::from_secs(24 * 3600),
    };
    let mut bots = HashMap::new();
    for config in &settings.bots {
        let keys = BotKeys::new(prefix, config.id);
        let intake = Intake {
            keys: keys.clone(),
            deployment: prefix.clone(),
            config: intake_config,
            waker: waker.clone(),
        };
        let api = telegram::bot(&config.token, &settings.telegram_api_url)?;
        bots.insert(
            config.name.as_str().to_owned(),
            Arc::new(BotRuntime { config: config.clone(), api, keys, intake }),
        );
    }
    let bots = Arc::new(bots);
    for config in &settings.bots {
        metrics.zero_bot(config.name.as_str());
    }
    metrics.zero_results(&metrics.user_cache, &["hit", "miss"]);
    watch_pools(&metrics, &db, &redis);
    let flood = Arc::new(Flood { limits: settings.flood, metrics: metrics.clone() });
    let tasks = TaskTracker::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight));
    metrics.webhook_max_in_flight.set(settings.max_in_flight as i64);
    metrics.on_scrape({
        let (in_flight, max) = (in_flight.clone(), settings.max_in_flight);
        move |metrics| metrics.webhook_in_flight.set((max - in_flight.available_permits()) as i64)
    });
    let feed_keys = Arc::new(FeedKeys::new(prefix));
    let state = WorkerState {
        bots: bots.clone(),
        db: db.clone(),
        redis: Arc::new(kv::Shared::new(redis.clone())),
        metrics: metrics.clone(),
        users: Arc::new(Users::new(db.clone(), settings.user_cache_ttl, metrics.clone())),
        dialogues: Arc::new(Dialogues { ttl: settings.dialogue_ttl }),
        flood: flood.clone(),
        posts: PostWriter::start(db.clone(), metrics.clone()),
        publisher: Publisher::start(feed_keys.clone(), settings.feed_stream_len),
        feed_keys,
        max_attempts: settings.max_attempts,
        tasks: tasks.clone(),
        in_flight: in_flight.clone(),
        max_body_bytes: settings.max_body_bytes,
        recorder: match &settings.record_path {
            Some(path) => Some(Arc::new(record::Recorder::open(path).with_context(|| {
                format!("opening {} ({})", path.display(), crate::settings::RECORD_PATH)
            })?)),
            None => None,
        },
    };
    let router = Router::new()
        .route("/webhook/{bot}", post(webhook::receive))
        .layer(axum::middleware::from_fn(telemetry::request_context))
        .with_state(state);
    let readiness = Readiness::new({
        let (db, redis) = (db.clone(), redis.clone());
        move || {
            let (db, redis) = (db.clone(), redis.clone());
            async move {
                let (db_ok, redis_ok) = tokio::join!(db::ping(&db), kv::ping(&redis));
                vec![("postgres", Health::of(db_ok)), ("redis", Health::of(redis_ok))]
            }
        }
    });
    let background = CancellationToken::new();
    let client = redis::Client::open(settings.redis_url.expose())?;
    tokio::spawn(waker.run(client.clone(), prefix.clone(), background.clone()));
    let outbox = outbox::OutboxConfig {
        claim_after: settings.outbox_claim_after,
        max_deliveries: settings.outbox_max_deliveries,
    };
    for bot in bots.values() {
        let sender = outbox::Sender {
            bot: bot.clone(),
            db: db.clone(),
            flood: flood.clone(),
            metrics: metrics.clone(),
            config: outbox,
        };
        tokio::spawn(sender.run(client.clone(), background.clone()));
    }
    if let Some(every) = settings.webhook_watch {
        tokio::spawn(webhook_watch::watch(bots, redis.clone(), metrics.clone(), every, background.clone()));
    }
    let server =
        Server::bind("worker", settings.listen, router, &settings.common, metrics, readiness, tasks).await?;
    Ok(server.cancel_on_stop(background))
}

/// Samples the worker's Postgres and Redis pools at every scrape.
fn watch_pools(metrics: &Metrics, db: &deadpool_postgres::Pool, redis: &deadpool_redis::Pool) {
    let (db, redis) = (db.clone(), redis.clone());
    metrics.watch_pool("postgres", move || db.status());
    metrics.watch_pool("redis", move || redis.status());
}
