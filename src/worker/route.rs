//! `POST /webhook/{bot}`: authenticate, read, parse, take the chat's turn, run the bot, and
//! answer Telegram with a status it understands (invariants 1, 2, 3 and 10 of DESIGN.md).
//!
//! The answer is 2xx only after the update's effects are durable, or after it was deliberately
//! ignored or dead-lettered. All the work after parsing runs in its own task, so that a caller
//! that hangs up (axum then drops this handler's future) cannot stop it half way — a post
//! stored but never published or answered.

use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use teloxide_core::types::Update;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::answer::Answer;
use super::dead_letter::{self, Report};
use super::state::{BotRuntime, WorkerState};
use crate::bot::{self, HandleError};
use crate::intake::{Begin, IntakeError};
use crate::kv::Conn;
use crate::telegram::redact;
use crate::telemetry;
use crate::types::UpdateId;

pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

pub async fn receive(
    State(state): State<WorkerState>,
    Path(bot_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(bot) = state.bots.get(&bot_name).cloned() else {
        return Answer::UnknownBot.into_response();
    };
    let response = authenticated(&state, &bot, &headers, body).await.into_response();
    state
        .metrics
        .webhook_requests
        .with_label_values(&[bot.client.config.name.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn authenticated(
    state: &WorkerState,
    bot: &Arc<BotRuntime>,
    headers: &HeaderMap,
    body: Body,
) -> Answer {
    let presented = headers.get(SECRET_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    if !bot.client.config.webhook_secret.matches(presented) {
        return Answer::Unauthorized;
    }
    // Past its capacity the worker sheds load at once, before reading the body: Telegram
    // backs off and redelivers, where a slow answer would time out and be retried as hard.
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        return Answer::Overloaded;
    };
    // The secret is checked before the body is read, so strangers cannot make us read anything.
    let bytes = match to_bytes(body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(_) => return Answer::TooLarge,
    };
    let update = match bot::read_update(&bytes) {
        Ok(update) => update,
        Err(why) => return dead_letter::unreadable(state, bot, &bytes, &why).await,
    };
    if let Some(recorder) = &state.recorder {
        recorder.record(&bot.client.config, &bytes);
    }
    let started = Instant::now();
    let kind = bot::kind_name(&update);
    let work =
        state.tasks.spawn(telemetry::own_scope(process(state.clone(), bot.clone(), update, bytes, permit)));
    let outcome =
        work.await.unwrap_or_else(|panic| Outcome::Failed(format!("update handler panicked: {panic}")));
    state.metrics.update_seconds.with_label_values(&[kind]).observe(started.elapsed().as_secs_f64());
    outcome.answer(bot)
}

/// How one delivery of an update ended.
enum Outcome {
    /// Handled now, handled before, ignored, or dead-lettered: acknowledge.
    Acknowledged,
    /// A dependency is down, or the chat stayed busy: Telegram should retry later.
    RetryLater(String),
    /// The handling failed; Telegram redelivers, up to the dead-letter bound.
    Failed(String),
}

impl Outcome {
    /// The answer to Telegram, with the cause logged (the token redacted).
    fn answer(self, bot: &BotRuntime) -> Answer {
        let config = &bot.client.config;
        match self {
            Outcome::Acknowledged => Answer::Acknowledged,
            Outcome::RetryLater(why) => {
                tracing::warn!(bot = %config.name, reason = %redact(&why, &config.token), "asking Telegram to retry");
                Answer::RetryLater
            }
            Outcome::Failed(why) => {
                tracing::error!(bot = %config.name, error = %redact(&why, &config.token), "update failed");
                Answer::Failed
            }
        }
    }
}

/// The work on one update, in its own task; `_in_flight` is its place among those the worker
/// handles at once. (Not an `async fn` with `#[instrument]`: that nests the future in one of
/// the same size, and every update's task would move twice the bytes.)
fn process(
    state: WorkerState,
    bot: Arc<BotRuntime>,
    update: Box<Update>,
    raw: Bytes,
    _in_flight: OwnedSemaphorePermit,
) -> impl Future<Output = Outcome> {
    let span = tracing::info_span!("process", bot = %bot.client.config.name, update_id = update.id.0);
    async move {
        let _in_flight = _in_flight; // held until the work ends
        handle_update(state, bot, update, raw).await
    }
    .instrument(span)
}

async fn handle_update(state: WorkerState, bot: Arc<BotRuntime>, update: Box<Update>, raw: Bytes) -> Outcome {
    let update_id = UpdateId::from(update.id);
    telemetry::tag("bot", bot.client.config.name.as_str());
    telemetry::tag("update_kind", bot::kind_name(&update));
    if let Some(chat) = update.chat() {
        telemetry::tag(
            "chat",
            &telemetry::chat_tag(bot.client.config.webhook_secret.expose().as_bytes(), chat.id.0),
        );
    }
    let mut redis = match state.redis.get().await {
        Ok(conn) => conn,
        Err(e) => return Outcome::RetryLater(format!("redis unavailable: {e}")),
    };
    let waiting = Instant::now();
    let identity = bot::identity(&update, &raw);
    let turn = match bot
        .intake
        .begin(
            &mut redis,
            (update_id, &identity),
            &bot::turn_key(&update),
            bot::read_ahead(&update, &bot.client.keys),
        )
        .await
    {
        Ok(Begin::Go(turn)) => turn,
        Ok(Begin::Done) => {
            state.metrics.dedup_hits.with_label_values(&[bot.client.config.name.as_str()]).inc();
            return Outcome::Acknowledged;
        }
        Err(e @ (IntakeError::TimedOut(_) | IntakeError::Held(_))) => {
            return Outcome::RetryLater(e.to_string());
        }
        Err(e @ IntakeError::Unavailable(_)) => {
            // The shared connection may be broken: the next update takes a fresh one.
            state.redis.reset();
            return Outcome::RetryLater(e.to_string());
        }
    };
    state
        .metrics
        .lease_wait_seconds
        .with_label_values(&[bot.client.config.name.as_str()])
        .observe(waiting.elapsed().as_secs_f64());
    if turn.reused {
        tracing::warn!(update_id = update_id.0, %identity, "an update id handled before came back as another update");
        state.metrics.update_ids_reused.with_label_values(&[bot.client.config.name.as_str()]).inc();
    }
    // A panic is a failed attempt like any other: the turn still ends (the chat's next update
    // is not held up until the lease expires) and the update is dead-lettered after the bound.
    let held = {
        let handling = bot::handle(&state.services, &redis, &bot.client, &turn, (&update, &identity));
        let handling = pin!(AssertUnwindSafe(handling).catch_unwind());
        bot.intake.hold(&redis, &turn, handling).await
    };
    let (handled, outcome) = match held {
        // The turn is another worker's now: stop, and let Telegram redeliver.
        Err(lost) => (false, Outcome::RetryLater(lost.to_string())),
        Ok(Ok(Ok(()))) => (true, Outcome::Acknowledged),
        Ok(Ok(Err(HandleError::Unavailable(e)))) => (false, Outcome::RetryLater(format!("{e:#}"))),
        Ok(Ok(Err(HandleError::Failed(e)))) => {
            attempt_failed(&state, &mut redis, &bot, (update_id, &raw), format!("{e:#}"), Report::Now).await
        }
        Ok(Err(panic)) => {
            let error = format!("the handler panicked: {}", panic_message(&*panic));
            // The panic hook has reported it already.
            attempt_failed(&state, &mut redis, &bot, (update_id, &raw), error, Report::Done).await
        }
    };
    if let Err(e) = bot.intake.end(&mut redis, turn, handled).await {
        // The effects are durable; at worst a redelivery finds them done in Postgres.
        tracing::warn!(error = %e, "could not record the end of an update's turn");
        state.redis.reset();
    }
    outcome
}

/// A failed attempt: counted, and dead-lettered (then acknowledged) after the bound. Returns
/// whether the update is done with, and how this delivery ends.
async fn attempt_failed(
    state: &WorkerState,
    redis: &mut Conn,
    bot: &BotRuntime,
    (update_id, raw): (UpdateId, &[u8]),
    error: String,
    report: Report,
) -> (bool, Outcome) {
    match dead_letter::failed(state, redis, bot, update_id, raw, &error, report).await {
        Ok(true) => (true, Outcome::Acknowledged),
        Ok(false) => (false, Outcome::Failed(error)),
        Err(e) => (false, Outcome::RetryLater(e)),
    }
}

/// What a panic said, as far as it can be read.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
