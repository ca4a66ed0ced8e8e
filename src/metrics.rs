//! The one Prometheus registry of a process, created at start and passed down.
//!
//! Names follow Prometheus conventions (`botfleet_…_total`, `_seconds` in base units). Label
//! values are bounded: bot names from the settings, routes, methods and status codes — never a
//! chat or user id, never a token.

use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Webhook answers by bot and HTTP status.
    pub webhook_requests: IntCounterVec,
    /// Time from a parsed update to its answer, by update kind.
    pub update_seconds: HistogramVec,
    /// Updates answered 2xx without effect (unknown kind, not for us), by bot and kind.
    pub updates_ignored: IntCounterVec,
    /// Authenticated bodies that are not an update, by bot.
    pub updates_unparseable: IntCounterVec,
    /// Posts created, by bot.
    pub posts_created: IntCounterVec,
    /// API answers by route and status.
    pub api_requests: IntCounterVec,
    /// Feed queries by the database that served them (`replica` or `primary`).
    pub feed_reads: IntCounterVec,
    /// Bot API calls by method and result (`ok`, `retry_after`, `refused`, `error`).
    pub bot_api_calls: IntCounterVec,
    /// Updates found already handled (a redelivery or a duplicate), by bot.
    pub dedup_hits: IntCounterVec,
    /// Time spent waiting for a chat's turn, by bot.
    pub lease_wait_seconds: HistogramVec,
    /// Time a message waited for its moment within Telegram's limits, by bot.
    pub flood_wait_seconds: HistogramVec,
    /// 429 answers from Telegram, each pausing the bot's sends cluster-wide, by bot.
    pub flood_pauses: IntCounterVec,
    /// Messages waiting in the outbox, the age of the oldest, and those dead-lettered, by bot.
    pub outbox_backlog: IntGaugeVec,
    pub outbox_oldest_age_seconds: GaugeVec,
    pub outbox_dead: IntCounterVec,
    /// Outbox messages delivered again after a failure or a sender's death: an upper bound of
    /// the duplicates (one whose first delivery reached Telegram goes out twice), by bot.
    pub outbox_redeliveries: IntCounterVec,
    pub posts_per_commit: Histogram,
    /// Dialogue saves refused because the state had changed, by bot.
    pub dialogue_conflicts: IntCounterVec,
    /// User-cache lookups by result (`hit`, `miss`).
    pub user_cache: IntCounterVec,
    /// Updates moved to the dead-letter table, by bot.
    pub dead_letters: IntCounterVec,
    /// Posts published to the feed stream, by bot.
    pub publishes: IntCounterVec,
    /// Open SSE streams on this node.
    pub sse_clients: IntGauge,
    /// SSE events written to clients (live and replayed).
    pub sse_events: IntCounter,
    /// SSE clients dropped for falling too far behind.
    pub sse_dropped: IntCounter,
    /// SSE reconnections with `Last-Event-ID`.
    pub sse_resumes: IntCounter,
    /// SSE resumptions told to reload because the stream no longer reached back.
    pub sse_resyncs: IntCounter,
    /// SSE connections refused at the node's limit.
    pub sse_rejected: IntCounter,
    /// Feed page lookups by result (`local_hit`, `redis_hit`, `miss`).
    pub page_cache: IntCounterVec,
    /// Reads of the feed's versions from Redis (concurrent requests share one).
    pub feed_state_reads: IntCounter,
    /// Feed reads that skipped a replica because it had not replayed the newest post.
    pub replica_lagging: IntCounter,
    /// Seconds each replica's replay is behind the primary (0 when caught up), by replica.
    pub replica_lag_seconds: GaugeVec,
    /// Whether each replica answers (1) or not (0), by replica.
    pub replica_up: IntGaugeVec,
    /// What Telegram says of each bot's webhook (getWebhookInfo, asked by one worker at a time):
    /// updates waiting for delivery, and the age and text of its last delivery error.
    pub webhook_pending_updates: IntGaugeVec,
    pub webhook_last_error_age_seconds: GaugeVec,
    pub webhook_last_error: IntGaugeVec,
    /// Whether each dependency answered at the last scrape (1) or not (0), by dependency.
    pub dependency_up: IntGaugeVec,
    /// Time of the hot database queries, by query (a fixed name each).
    pub db_query_seconds: HistogramVec,
    /// Time to answer an API request, by route template.
    pub api_request_seconds: HistogramVec,
    /// Connections of each pool, sampled at every scrape: the pool's bound, those open by
    /// state (`idle`, `in_use`), and the callers waiting for one.
    pub pool_max_connections: IntGaugeVec,
    pub pool_connections: IntGaugeVec,
    pub pool_waiting: IntGaugeVec,
    /// Updates handled now by this worker, and its bound (`BOTFLEET_MAX_IN_FLIGHT`).
    pub webhook_in_flight: IntGauge,
    pub webhook_max_in_flight: IntGauge,
    /// The SSE connection limit of this node.
    pub sse_max_clients: IntGauge,
    probes: Mutex<Vec<Probe>>,
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
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let counter = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<HistogramVec> {
            let buckets = vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let histogram = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
            registry.register(Box::new(histogram.clone()))?;
            Ok(histogram)
        };
        let plain = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let gauge = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let float_gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<GaugeVec> {
            let gauge = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let single = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let posts_per_commit = Histogram::with_opts(
            HistogramOpts::new(
                "botfleet_posts_per_commit",
                "New posts written by one multi-row INSERT (group commit)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        registry.register(Box::new(posts_per_commit.clone()))?;
        // CPU, memory, file descriptors and threads of the process, under the standard names.
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        let update_seconds =
            histogram("botfleet_update_handling_seconds", "Time to handle one update, by kind", &["kind"])?;
        Ok(Self {
            webhook_requests: counter(
                "botfleet_webhook_requests_total",
                "Webhook requests answered, by bot and status",
                &["bot", "status"],
            )?,
            update_seconds,
            updates_ignored: counter(
                "botfleet_updates_ignored_total",
                "Updates acknowledged without effect, by bot and kind",
                &["bot", "kind"],
            )?,
            updates_unparseable: counter(
                "botfleet_updates_unparseable_total",
                "Authenticated webhook bodies that are not a Telegram update",
                &["bot"],
            )?,
            posts_created: counter("botfleet_posts_created_total", "Posts created, by bot", &["bot"])?,
            api_requests: counter(
                "botfleet_api_requests_total",
                "API requests answered, by route and status",
                &["route", "status"],
            )?,
            feed_reads: counter(
                "botfleet_feed_reads_total",
                "Feed database queries, by the database that answered",
                &["source"],
            )?,
            bot_api_calls: counter(
                "botfleet_bot_api_calls_total",
                "Bot API calls, by method and result",
                &["method", "result"],
            )?,
            dedup_hits: counter(
                "botfleet_dedup_hits_total",
                "Updates acknowledged because they were already handled, by bot",
                &["bot"],
            )?,
            posts_per_commit,
            lease_wait_seconds: histogram(
                "botfleet_chat_lease_wait_seconds",
                "Time an update waited for its chat's turn, by bot",
                &["bot"],
            )?,
            flood_wait_seconds: histogram(
                "botfleet_flood_wait_seconds",
                "Time a message waited for its moment within Telegram's limits, by bot",
                &["bot"],
            )?,
            flood_pauses: counter(
                "botfleet_flood_pauses_total",
                "429 answers from Telegram, each pausing the bot's sends on every worker, by bot",
                &["bot"],
            )?,
            dialogue_conflicts: counter(
                "botfleet_dialogue_cas_conflicts_total",
                "Dialogue saves refused because the state changed, by bot",
                &["bot"],
            )?,
            user_cache: counter("botfleet_user_cache_total", "User-cache lookups, by result", &["result"])?,
            dead_letters: counter("botfleet_dead_letters_total", "Updates dead-lettered, by bot", &["bot"])?,
            publishes: counter("botfleet_publishes_total", "Posts published to the feed, by bot", &["bot"])?,
            sse_clients: single("botfleet_sse_clients", "Open SSE streams on this node")?,
            sse_events: plain("botfleet_sse_events_total", "SSE events written to clients")?,
            sse_dropped: plain("botfleet_sse_dropped_total", "SSE clients dropped for falling behind")?,
            sse_resumes: plain("botfleet_sse_resumes_total", "SSE reconnections with Last-Event-ID")?,
            sse_resyncs: plain("botfleet_sse_resyncs_total", "SSE resumptions told to reload page 1")?,
            sse_rejected: plain(
                "botfleet_sse_rejected_total",
                "SSE connections refused at the node's limit",
            )?,
            page_cache: counter("botfleet_page_cache_total", "Feed page lookups, by result", &["result"])?,
            feed_state_reads: plain(
                "botfleet_feed_state_reads_total",
                "Reads of the feed's versions from Redis, each shared by the requests that waited for it",
            )?,
            replica_lagging: plain(
                "botfleet_replica_lagging_total",
                "Feed reads that skipped a replica lagging behind the newest post",
            )?,
            replica_lag_seconds: float_gauge(
                "botfleet_replica_lag_seconds",
                "Seconds a replica's replay is behind (0 when caught up)",
                &["replica"],
            )?,
            replica_up: gauge("botfleet_replica_up", "Whether a replica answers", &["replica"])?,
            webhook_pending_updates: gauge(
                "botfleet_webhook_pending_updates",
                "Updates Telegram holds for the bot's webhook",
                &["bot"],
            )?,
            outbox_backlog: gauge("botfleet_outbox_backlog", "Messages waiting in the outbox", &["bot"])?,
            outbox_oldest_age_seconds: float_gauge(
                "botfleet_outbox_oldest_age_seconds",
                "Age of the oldest message in the outbox (0: empty)",
                &["bot"],
            )?,
            outbox_redeliveries: counter(
                "botfleet_outbox_redeliveries_total",
                "Outbox messages delivered again (after a failure or a sender's death), by bot",
                &["bot"],
            )?,
            outbox_dead: counter(
                "botfleet_outbox_dead_total",
                "Outbox messages moved to the dead stream after too many deliveries, by bot",
                &["bot"],
            )?,
            webhook_last_error_age_seconds: float_gauge(
                "botfleet_webhook_last_error_age_seconds",
                "Seconds since Telegram's last failed delivery to the bot's webhook (absent: none)",
                &["bot"],
            )?,
            webhook_last_error: gauge(
                "botfleet_webhook_last_error",
                "Always 1; its message label is Telegram's last delivery error for the bot (absent: none)",
                &["bot", "message"],
            )?,
            dependency_up: gauge(
                "botfleet_dependency_up",
                "Whether a dependency answered at the last scrape (1) or not (0)",
                &["dependency"],
            )?,
            db_query_seconds: histogram(
                "botfleet_db_query_seconds",
                "Time of a hot database query, by query",
                &["query"],
            )?,
            api_request_seconds: histogram(
                "botfleet_api_request_seconds",
                "Time to answer an API request, by route",
                &["route"],
            )?,
            pool_max_connections: gauge(
                "botfleet_pool_max_connections",
                "The most connections a pool opens",
                &["pool"],
            )?,
            pool_connections: gauge(
                "botfleet_pool_connections",
                "Open connections of a pool, by state",
                &["pool", "state"],
            )?,
            pool_waiting: gauge(
                "botfleet_pool_waiting",
                "Callers waiting for a pool's connection",
                &["pool"],
            )?,
            webhook_in_flight: single("botfleet_webhook_in_flight", "Updates being handled by this worker")?,
            webhook_max_in_flight: single(
                "botfleet_webhook_max_in_flight",
                "Updates this worker handles at once at most",
            )?,
            sse_max_clients: single("botfleet_sse_max_clients", "SSE streams this node serves at most")?,
            probes: Mutex::new(Vec::new()),
            registry,
        })
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
