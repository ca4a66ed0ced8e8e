//! The admin server of every long-running process: `/healthz` (alive), `/readyz`
//! (dependencies reachable and not draining) and `/metrics` (Prometheus text format).
//!
//! It must never serve anything a client of the product may see; it listens on its own port.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// The state of one dependency, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Partly down, but the process can still do its work (a replica down: the primary serves).
    Degraded,
    /// Down: the process cannot work, and `/readyz` fails.
    Unreachable,
}

impl Health {
    pub fn of(up: bool) -> Self {
        if up { Health::Ok } else { Health::Unreachable }
    }

    fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Unreachable => "unreachable",
        }
    }
}

type CheckFuture = Pin<Box<dyn Future<Output = Vec<(&'static str, Health)>> + Send>>;

/// What `/readyz` reports: whether the process drains, and a check of its dependencies that
/// returns each dependency's name and whether it answered.
#[derive(Clone)]
pub struct Readiness {
    draining: Arc<AtomicBool>,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl Readiness {
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<(&'static str, Health)>> + Send + 'static,
    {
        Self { draining: Arc::new(AtomicBool::new(false)), check: Arc::new(move || Box::pin(check())) }
    }

    /// From now on `/readyz` fails, so load balancers stop sending new work.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

pub fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { metrics, readiness })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
    }
    let checks = (state.readiness.check)().await;
    let body: String = checks.iter().map(|(name, health)| format!("{name}: {}\n", health.as_str())).collect();
    let up = checks.iter().all(|(_, health)| *health != Health::Unreachable);
    let status = if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, body)
}

/// The metrics, with each dependency's `botfleet_dependency_up` checked at this scrape.
async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    for (name, health) in (state.readiness.check)().await {
        state.metrics.dependency_up.with_label_values(&[name]).set(i64::from(health != Health::Unreachable));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}
