//! `POST /webhook/{bot}`: authenticate, read, parse, hand the update to the bot, and answer
//! Telegram with a status it understands (invariants 1 and 10 of DESIGN.md).
//!
//! The answer is 2xx only after the update's effects are durable. The handling runs in its own
//! task so that a caller that hangs up (axum then drops this handler's future) cannot stop it
//! half way: the post would be stored but the reply never sent.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use teloxide_core::types::Update;

use super::bot::{self, HandleError};
use super::{BotRuntime, WorkerState};
use crate::http::json_error;

pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Seconds Telegram is asked to wait before redelivering when a dependency is down.
const RETRY_AFTER_SECS: &str = "5";

pub async fn receive(
    State(state): State<WorkerState>,
    Path(bot_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(bot) = state.bots.get(&bot_name).cloned() else {
        return json_error(StatusCode::NOT_FOUND, "unknown bot");
    };
    let response = authenticated(&state, &bot, &headers, body).await;
    state
        .metrics
        .webhook_requests
        .with_label_values(&[bot.config.name.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn authenticated(
    state: &WorkerState,
    bot: &Arc<BotRuntime>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let presented = headers.get(SECRET_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    if !bot.config.webhook_secret.matches(presented) {
        return json_error(StatusCode::UNAUTHORIZED, "missing or wrong secret token");
    }
    // The secret is checked before the body is read, so strangers cannot make us read anything.
    let bytes = match to_bytes(body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "body over the size limit"),
    };
    let update: Update = match serde_json::from_slice(&bytes) {
        Ok(update) => update,
        Err(e) => {
            state.metrics.updates_unparseable.with_label_values(&[bot.config.name.as_str()]).inc();
            tracing::warn!(bot = %bot.config.name, error = %e, "unparseable update");
            return json_error(StatusCode::BAD_REQUEST, &format!("not a Telegram update: {e}"));
        }
    };
    let started = Instant::now();
    let kind = bot::kind_name(&update);
    let work = state.tasks.spawn(bot::handle(state.clone(), bot.clone(), update));
    let outcome = match work.await {
        Ok(outcome) => outcome,
        Err(join_error) => Err(HandleError::Failed(anyhow::anyhow!("update handler panicked: {join_error}"))),
    };
    state.metrics.update_seconds.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => StatusCode::OK.into_response(),
        Err(HandleError::Unavailable(e)) => {
            tracing::warn!(bot = %bot.config.name, error = %e, "dependency unavailable; asking Telegram to retry");
            let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            response
        }
        Err(HandleError::Failed(e)) => {
            tracing::error!(bot = %bot.config.name, error = %e, "update failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}
