//! The API node: serves the public feed to browsers, read from replicas with the read-only role.
//!
//! It never writes to Postgres (its role cannot) and never holds a bot token in anything it
//! serves.

mod error;
mod feed;
mod limits;
mod media;
mod state;
mod stream;
pub use stream::MAX_RESUME;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::task::TaskTracker;

use crate::admin::{Health, Readiness};
use crate::feed::cache::PageCache;
use crate::feed::hub::Hub;
use crate::http::{LeanStreams, Server};
use crate::kv::{self, FeedKeys};
use crate::metrics::Metrics;
use crate::settings::{self, ApiSettings};
use crate::shutdown::CancellationToken;
use crate::store::{self, replicas::Reader};
use crate::telegram::files::FileBots;
use crate::telemetry;
use error::ApiError;
use state::ApiState;

const STREAM_PATH: &str = "/api/feed/stream";

/// Binds an API node's listeners; `run_until_stopped` on the result serves.
pub async fn build(settings: ApiSettings, metrics: Arc<Metrics>) -> anyhow::Result<Server> {
    let primary = store::pool(&settings.database_url, settings.db_pool_size)?;
    let replicas = settings
        .replica_urls
        .iter()
        .map(|url| store::pool(url, settings.db_pool_size))
        .collect::<anyhow::Result<Vec<_>>>()?;
    kv::check_credentials(&settings.redis_url, settings::REDIS_URL).await?;
    if settings.cache_redis_url != settings.redis_url {
        kv::check_credentials(&settings.cache_redis_url, settings::CACHE_REDIS_URL).await?;
    }
    let redis = kv::pool(&settings.redis_url, 8)?;
    let cache_redis = kv::pool(&settings.cache_redis_url, 8)?;
    watch_pools(&metrics, &primary, &replicas, &[("redis", &redis), ("redis-cache", &cache_redis)]);
    metrics.zero_results(&metrics.page_cache, &["local_hit", "redis_hit", "miss"]);
    metrics.zero_results(&metrics.feed_reads, &["replica", "primary"]);
    metrics.zero_results(&metrics.limited, &["requests", "stream_connects", "streams", "heads"]);
    let reader = Arc::new(Reader::new(primary, replicas, metrics.clone()));
    let keys = FeedKeys::new(&settings.redis_prefix);
    let media = FileBots::new(
        &settings.bots,
        &settings.telegram_api_url,
        &settings.redis_prefix,
        redis.clone(),
        cache_redis.clone(),
    )?;
    let cache = Arc::new(PageCache::new(redis.clone(), cache_redis.clone(), keys.clone(), metrics.clone()));
    let hub = Hub::new(keys, redis.clone(), settings.sse_max_clients, settings.sse_heartbeat);
    metrics.sse_max_clients.set(settings.sse_max_clients as i64);
    let limits = Arc::new(limits::Limits::new(settings.limits.clone(), metrics.clone(), STREAM_PATH));
    let state = ApiState {
        reader: reader.clone(),
        metrics: metrics.clone(),
        hub: hub.clone(),
        cache,
        media,
        cursors: Arc::default(),
    };
    let router = Router::new()
        .route("/api/feed", get(feed::page))
        .route(STREAM_PATH, get(stream::stream))
        .route("/api/posts/{id}", get(feed::post))
        .route("/api/media/{id}", get(media::media))
        .route("/", get(live_page))
        .route("/api/openapi.json", get(openapi))
        .fallback(|| async { ApiError::NotFound("no such endpoint") })
        .layer(middleware::from_fn_with_state(limits, limits::enforce))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(middleware::from_fn_with_state(Arc::new(settings.cors_origins.clone()), cors))
        .layer(middleware::from_fn(telemetry::request_context))
        .with_state(state);
    let background = CancellationToken::new();
    tokio::spawn(reader.clone().watch_lag(std::time::Duration::from_secs(5), background.clone()));
    tokio::spawn(kv::watch_memory("state", redis.clone(), metrics.clone(), background.clone()));
    tokio::spawn(kv::watch_memory("cache", cache_redis.clone(), metrics.clone(), background.clone()));
    let readiness = Readiness::new(move || {
        let (reader, redis) = (reader.clone(), redis.clone());
        async move {
            let (db, redis_ok) = tokio::join!(reader.health(), kv::ping(&redis));
            vec![("postgres", db), ("redis", Health::of(redis_ok))]
        }
    });
    let client = kv::Client::open(&settings.redis_url)?;
    // Taken before the node serves: every post published once it serves reaches its clients,
    // whether or not the subscription is up yet.
    let start = hub.start().await;
    tokio::spawn(hub.clone().run(client, start, background.clone()));
    tokio::spawn(hub.clone().beat(background.clone()));
    let tasks = TaskTracker::new();
    let limited_heads = metrics.limited.with_label_values(&["heads"]);
    let server =
        Server::bind("api", settings.listen, router, &settings.common, metrics, readiness, tasks).await?;
    let streams = LeanStreams {
        paths: &[STREAM_PATH],
        trusted_proxies: settings.limits.trusted_proxies.clone(),
        refused: limited_heads,
    };
    Ok(server.cancel_on_drain(hub.closing.clone()).cancel_on_stop(background).lean_streams(streams))
}

/// The live feed page: plain HTML and JavaScript, no build step.
async fn live_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=60")],
        include_str!("page.html"),
    )
}

/// The OpenAPI document of these endpoints (tested against their real answers).
async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], include_str!("openapi.json"))
}

/// CORS for the configured origins only: other origins get no CORS headers, so browsers keep
/// their pages out. Preflights from allowed origins are answered here. With origins configured,
/// every answer says it varies by `Origin`, so a shared cache (Nginx's) never hands an answer
/// made for one origin, or for none, to another.
async fn cors(State(allowed): State<Arc<Vec<String>>>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| allowed.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let preflight = request.method() == Method::OPTIONS;
    let mut response = match (&origin, preflight) {
        (Some(_), true) => StatusCode::NO_CONTENT.into_response(),
        _ => next.run(request).await,
    };
    let headers = response.headers_mut();
    if !allowed.is_empty() {
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("ETag, Link"));
        if preflight {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, OPTIONS"));
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("If-None-Match, Last-Event-ID"),
            );
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
    }
    response
}

/// Counts every answer by route template (bounded) and status.
async fn count_requests(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics.api_requests.with_label_values(&[route.as_str(), response.status().as_str()]).inc();
    // Until the answer's head: a stream's lifetime is not a latency.
    state
        .metrics
        .api_request_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Samples the node's pools at every scrape: the primary, each replica, each Redis.
fn watch_pools(
    metrics: &Metrics,
    primary: &deadpool_postgres::Pool,
    replicas: &[deadpool_postgres::Pool],
    redis: &[(&str, &kv::Pool)],
) {
    let pools = [("postgres".to_owned(), primary)]
        .into_iter()
        .chain(replicas.iter().enumerate().map(|(i, pool)| (format!("replica-{}", i + 1), pool)));
    for (name, pool) in pools {
        let pool = pool.clone();
        metrics.watch_pool(&name, move || pool.status());
    }
    for (name, pool) in redis {
        let pool = (*pool).clone();
        metrics.watch_pool(name, move || pool.status());
    }
}
