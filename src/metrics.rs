//! The one Prometheus registry of a process, created at start and passed down.
//!
//! Names follow Prometheus conventions (`botfleet_…_total`, `_seconds` in base units). Label
//! values are bounded: bot names from the settings, routes, methods and status codes — never a
//! chat or user id, never a token.

use std::sync::Mutex;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Declares the metric families in one table: each field with its doc, type, name, help and
/// labels. `Metrics::register` makes and registers them all.
macro_rules! metrics {
    ($($(#[$doc:meta])* $field:ident: $ty:ty = $name:literal, $help:literal, [$($label:literal),*];)*) => {
        pub struct Metrics {
            registry: Registry,
            probes: Mutex<Vec<Probe>>,
            $($(#[$doc])* pub $field: $ty,)*
        }

        impl Metrics {
            fn register(registry: Registry) -> prometheus::Result<Self> {
                $(let $field = <$ty as Family>::make($name, $help, &[$($label),*])?;
                registry.register(Box::new($field.clone()))?;)*
                Ok(Self { registry, probes: Mutex::default(), $($field,)* })
            }
        }
    };
}

/// A kind of metric family the table may declare.
trait Family: Collector + Clone + Sized + 'static {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self>;
}

/// Buckets of the `_seconds` histograms: a millisecond to ten seconds.
const SECONDS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets of the one plain histogram, posts per group commit (at most 64).
const POSTS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

impl Family for IntCounterVec {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        IntCounterVec::new(Opts::new(name, help), labels)
    }
}

impl Family for IntCounter {
    fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        IntCounter::new(name, help)
    }
}

impl Family for HistogramVec {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        HistogramVec::new(HistogramOpts::new(name, help).buckets(SECONDS.to_vec()), labels)
    }
}

impl Family for Histogram {
    fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(POSTS.to_vec()))
    }
}

impl Family for IntGaugeVec {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        IntGaugeVec::new(Opts::new(name, help), labels)
    }
}

impl Family for GaugeVec {
    fn make(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        GaugeVec::new(Opts::new(name, help), labels)
    }
}

impl Family for IntGauge {
    fn make(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        IntGauge::new(name, help)
    }
}

metrics! {
    /// Webhook answers by bot and HTTP status.
    webhook_requests: IntCounterVec = "botfleet_webhook_requests_total",
        "Webhook requests answered, by bot and status",
        ["bot", "status"];
    /// Time from a parsed update to its answer, by update kind.
    update_seconds: HistogramVec = "botfleet_update_handling_seconds",
        "Time to handle one update, by kind",
        ["kind"];
    /// Updates answered 2xx without effect (unknown kind, not for us), by bot and kind.
    updates_ignored: IntCounterVec = "botfleet_updates_ignored_total",
        "Updates acknowledged without effect, by bot and kind",
        ["bot", "kind"];
    /// Authenticated bodies that are not an update, by bot.
    updates_unparseable: IntCounterVec = "botfleet_updates_unparseable_total",
        "Authenticated webhook bodies that are not a Telegram update",
        ["bot"];
    /// Posts created, by bot.
    posts_created: IntCounterVec = "botfleet_posts_created_total",
        "Posts created, by bot",
        ["bot"];
    /// API answers by route and status.
    api_requests: IntCounterVec = "botfleet_api_requests_total",
        "API requests answered, by route and status",
        ["route", "status"];
    /// Feed queries by the database that served them (`replica` or `primary`).
    feed_reads: IntCounterVec = "botfleet_feed_reads_total",
        "Feed database queries, by the database that answered",
        ["source"];
    /// Bot API calls by method and result (`ok`, `retry_after`, `refused`, `error`).
    bot_api_calls: IntCounterVec = "botfleet_bot_api_calls_total",
        "Bot API calls, by method and result",
        ["method", "result"];
    /// Updates found already handled (a redelivery or a duplicate), by bot.
    dedup_hits: IntCounterVec = "botfleet_dedup_hits_total",
        "Updates acknowledged because they were already handled, by bot",
        ["bot"];
    /// Update ids that came back as another update (Telegram reuses ids after a week of
    /// silence): handled as new.
    update_ids_reused: IntCounterVec = "botfleet_update_ids_reused_total",
        "Update ids handled before that came back as another update, by bot",
        ["bot"];
    /// Time spent waiting for a chat's turn, by bot.
    lease_wait_seconds: HistogramVec = "botfleet_chat_lease_wait_seconds",
        "Time an update waited for its chat's turn, by bot",
        ["bot"];
    /// Time a message waited for its moment within Telegram's limits, by bot.
    flood_wait_seconds: HistogramVec = "botfleet_flood_wait_seconds",
        "Time a message waited for its moment within Telegram's limits, by bot",
        ["bot"];
    /// 429 answers from Telegram, each pausing the bot's sends cluster-wide, by bot.
    flood_pauses: IntCounterVec = "botfleet_flood_pauses_total",
        "429 answers from Telegram, each pausing the bot's sends on every worker, by bot",
        ["bot"];
    /// Messages waiting in the outbox, the age of the oldest, and those dead-lettered, by bot.
    outbox_backlog: IntGaugeVec = "botfleet_outbox_backlog",
        "Messages waiting in the outbox",
        ["bot"];
    outbox_oldest_age_seconds: GaugeVec = "botfleet_outbox_oldest_age_seconds",
        "Age of the oldest message in the outbox (0: empty)",
        ["bot"];
    outbox_dead: IntCounterVec = "botfleet_outbox_dead_total",
        "Outbox messages moved to the dead stream after too many deliveries, by bot",
        ["bot"];
    /// Outbox messages queued again from Postgres after Redis lost them, by bot and kind
    /// (`notice`, `recipient`).
    outbox_rebuilt: IntCounterVec = "botfleet_outbox_rebuilt_total",
        "Outbox messages queued again from Postgres after Redis lost them, by bot and kind",
        ["bot", "kind"];
    /// Outbox messages delivered again after a failure or a sender's death: an upper bound of
    /// the duplicates (one whose first delivery reached Telegram goes out twice), by bot.
    outbox_redeliveries: IntCounterVec = "botfleet_outbox_redeliveries_total",
        "Outbox messages delivered again (after a failure or a sender's death), by bot",
        ["bot"];
    posts_per_commit: Histogram = "botfleet_posts_per_commit",
        "New posts written by one multi-row INSERT (group commit)",
        [];
    /// Dialogue saves refused because the state had changed, by bot.
    dialogue_conflicts: IntCounterVec = "botfleet_dialogue_cas_conflicts_total",
        "Dialogue saves refused because the state changed, by bot",
        ["bot"];
    /// User-cache lookups by result (`hit`, `miss`).
    user_cache: IntCounterVec = "botfleet_user_cache_total",
        "User-cache lookups, by result",
        ["result"];
    /// Updates moved to the dead-letter table, by bot.
    dead_letters: IntCounterVec = "botfleet_dead_letters_total",
        "Updates dead-lettered, by bot",
        ["bot"];
    /// Posts published to the feed stream, by bot.
    publishes: IntCounterVec = "botfleet_publishes_total",
        "Posts published to the feed, by bot",
        ["bot"];
    /// Open SSE streams on this node.
    sse_clients: IntGauge = "botfleet_sse_clients",
        "Open SSE streams on this node",
        [];
    /// SSE events written to clients (live and replayed).
    sse_events: IntCounter = "botfleet_sse_events_total",
        "SSE events written to clients",
        [];
    /// SSE clients dropped for falling too far behind.
    sse_dropped: IntCounter = "botfleet_sse_dropped_total",
        "SSE clients dropped for falling behind",
        [];
    /// SSE reconnections with `Last-Event-ID`.
    sse_resumes: IntCounter = "botfleet_sse_resumes_total",
        "SSE reconnections with Last-Event-ID",
        [];
    /// SSE resumptions told to reload because the stream no longer reached back.
    sse_resyncs: IntCounter = "botfleet_sse_resyncs_total",
        "SSE resumptions told to reload page 1",
        [];
    /// Public requests and connections refused by a per-address limit, by limit (`requests`,
    /// `stream_connects`, `streams`, `heads`).
    limited: IntCounterVec = "botfleet_api_limited_total",
        "Public requests and connections refused by a per-address limit, by limit",
        ["limit"];
    /// Memory of each Redis (`state`, `cache`): `used`, and `max` (its maxmemory; 0 is none).
    redis_memory: IntGaugeVec = "botfleet_redis_memory_bytes",
        "Memory of each Redis the process uses: used, and max (its maxmemory, 0 for none)",
        ["redis", "kind"];
    /// SSE connections refused at the node's limit.
    sse_rejected: IntCounter = "botfleet_sse_rejected_total",
        "SSE connections refused at the node's limit",
        [];
    /// Feed page lookups by result (`local_hit`, `redis_hit`, `miss`).
    page_cache: IntCounterVec = "botfleet_page_cache_total",
        "Feed page lookups, by result",
        ["result"];
    /// Reads of the feed's versions from Redis (concurrent requests share one).
    feed_state_reads: IntCounter = "botfleet_feed_state_reads_total",
        "Reads of the feed's versions from Redis, each shared by the requests that waited for it",
        [];
    /// Feed reads that skipped a replica because it had not replayed the latest publish or removal.
    replica_lagging: IntCounter = "botfleet_replica_lagging_total",
        "Feed reads that skipped a replica lagging behind the latest publish or removal",
        [];
    /// Seconds each replica's replay is behind the primary (0 when caught up), by replica.
    replica_lag_seconds: GaugeVec = "botfleet_replica_lag_seconds",
        "Seconds a replica's replay is behind (0 when caught up)",
        ["replica"];
    /// Whether each replica answers (1) or not (0), by replica.
    replica_up: IntGaugeVec = "botfleet_replica_up",
        "Whether a replica answers",
        ["replica"];
    /// What Telegram says of each bot's webhook (getWebhookInfo, asked by one worker at a time):
    /// updates waiting for delivery, and the age and text of its last delivery error.
    webhook_pending_updates: IntGaugeVec = "botfleet_webhook_pending_updates",
        "Updates Telegram holds for the bot's webhook",
        ["bot"];
    webhook_last_error_age_seconds: GaugeVec = "botfleet_webhook_last_error_age_seconds",
        "Seconds since Telegram's last failed delivery to the bot's webhook (absent: none)",
        ["bot"];
    webhook_last_error: IntGaugeVec = "botfleet_webhook_last_error",
        "Always 1; its message label is Telegram's last delivery error for the bot (absent: none)",
        ["bot", "message"];
    /// Whether each dependency answered at the last scrape (1) or not (0), by dependency.
    dependency_up: IntGaugeVec = "botfleet_dependency_up",
        "Whether a dependency answered at the last scrape (1) or not (0)",
        ["dependency"];
    /// Time of the hot database queries, by query (a fixed name each).
    db_query_seconds: HistogramVec = "botfleet_db_query_seconds",
        "Time of a hot database query, by query",
        ["query"];
    /// Time to answer an API request, by route template.
    api_request_seconds: HistogramVec = "botfleet_api_request_seconds",
        "Time to answer an API request, by route",
        ["route"];
    /// Connections of each pool, sampled at every scrape: the pool's bound, those open by
    /// state (`idle`, `in_use`), and the callers waiting for one.
    pool_max_connections: IntGaugeVec = "botfleet_pool_max_connections",
        "The most connections a pool opens",
        ["pool"];
    pool_connections: IntGaugeVec = "botfleet_pool_connections",
        "Open connections of a pool, by state",
        ["pool", "state"];
    pool_waiting: IntGaugeVec = "botfleet_pool_waiting",
        "Callers waiting for a pool's connection",
        ["pool"];
    /// Updates handled now by this worker, and its bound (`BOTFLEET_MAX_IN_FLIGHT`).
    webhook_in_flight: IntGauge = "botfleet_webhook_in_flight",
        "Updates being handled by this worker",
        [];
    webhook_max_in_flight: IntGauge = "botfleet_webhook_max_in_flight",
        "Updates this worker handles at once at most",
        [];
    /// The SSE connection limit of this node.
    sse_max_clients: IntGauge = "botfleet_sse_max_clients",
        "SSE streams this node serves at most",
        [];
}

/// Sets gauges from the state of something else (a pool, a semaphore) at every scrape.
type Probe = Box<dyn Fn(&Metrics) + Send + Sync>;

impl Metrics {
    /// A fresh registry for one process (`worker`, `api`, `fake-telegram`).
    pub fn new(process: &str) -> prometheus::Result<Self> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("botfleet_build_info", "Build of this process; always 1"),
            &["version", "process"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), process]).set(1);
        registry.register(Box::new(build_info))?;
        // CPU, memory, file descriptors and threads of the process, under the standard names.
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Self::register(registry)
    }

    /// Runs `probe` at every scrape, before the metrics are read.
    pub fn on_scrape(&self, probe: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.probes.lock().unwrap_or_else(|p| p.into_inner()).push(Box::new(probe));
    }

    /// Samples a pool's connections (`status` reads deadpool's figures) at every scrape.
    pub fn watch_pool(
        &self,
        name: &str,
        status: impl Fn() -> deadpool_postgres::Status + Send + Sync + 'static,
    ) {
        let name = name.to_owned();
        self.on_scrape(move |metrics| {
            let status = status();
            let (open, idle) = (status.size as i64, status.available as i64);
            metrics.pool_max_connections.with_label_values(&[name.as_str()]).set(status.max_size as i64);
            metrics.pool_connections.with_label_values(&[name.as_str(), "idle"]).set(idle);
            metrics.pool_connections.with_label_values(&[name.as_str(), "in_use"]).set(open - idle);
            metrics.pool_waiting.with_label_values(&[name.as_str()]).set(status.waiting as i64);
        });
    }

    /// Creates the series of a bot's counters at zero, so that graphs and alerts see a series
    /// (and a rate) from the start rather than from its first event.
    pub fn zero_bot(&self, bot: &str) {
        for counter in [
            &self.updates_unparseable,
            &self.posts_created,
            &self.dedup_hits,
            &self.update_ids_reused,
            &self.flood_pauses,
            &self.outbox_redeliveries,
            &self.outbox_dead,
            &self.dialogue_conflicts,
            &self.dead_letters,
            &self.publishes,
        ] {
            counter.with_label_values(&[bot]);
        }
        for status in ["200", "400", "401", "413", "500", "503"] {
            self.webhook_requests.with_label_values(&[bot, status]);
        }
        self.outbox_backlog.with_label_values(&[bot]);
        self.outbox_oldest_age_seconds.with_label_values(&[bot]);
        self.lease_wait_seconds.with_label_values(&[bot]);
        self.flood_wait_seconds.with_label_values(&[bot]);
    }

    /// Creates the series of counters labelled by a fixed set of results at zero.
    pub fn zero_results(&self, counter: &IntCounterVec, results: &[&str]) {
        for result in results {
            counter.with_label_values(&[result]);
        }
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        for probe in self.probes.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            probe(self);
        }
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on metric families that cannot exist here (empty names).
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}
