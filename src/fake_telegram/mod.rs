//! The fake Telegram: a Bot API double for tests, the local cluster and load tests.
//!
//! It answers the methods botfleet uses (`getMe`, `setWebhook`, `getWebhookInfo`,
//! `deleteWebhook`, `setMyCommands`, `getMyCommands`, `sendMessage`, `sendPhoto`, `editMessageText`, `answerCallbackQuery`,
//! `getFile` and file download) the way Telegram does, closely enough that teloxide's own client
//! cannot tell the difference. It records every call for assertions (`GET /__fake/calls`),
//! when asked answers 429 with `retry_after` past Telegram's send limits, and delivers captures
//! of updates to a registered webhook as Telegram does (`POST /__fake/deliver`, with the
//! replayer's code: `crate::replay`).
//!
//! It accepts any well-formed token and never records one: calls are logged by bot id.

mod limits;
mod methods;
mod state;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::task::TaskTracker;

use crate::admin::Readiness;
use crate::http::Server;
use crate::metrics::Metrics;
use crate::settings::FakeTelegramSettings;

pub use limits::Limits;
use methods::Answer;
pub use state::{Call, Failure};
use state::{Inner, Recorded, now_ms};

/// Largest body the fake accepts (Telegram allows 10 MB photo uploads).
const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;

/// The fake's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    /// How many calls arrived that a delay then held: a test knows when one is in flight.
    held: Arc<tokio::sync::watch::Sender<u64>>,
    /// Woken at every recorded call, for whoever waits for some (`GET /__fake/calls?at_least=`).
    recorded: Arc<tokio::sync::Notify>,
}

impl Fake {
    pub fn new(enforce_limits: bool) -> Self {
        let inner = Inner { limits: Limits::new(enforce_limits), ..Inner::default() };
        Self {
            inner: Arc::new(Mutex::new(inner)),
            held: Arc::new(tokio::sync::watch::Sender::new(0)),
            recorded: Arc::new(tokio::sync::Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Answers calls of `method` only after `delay` from now on; `None` makes it fast again.
    pub fn set_delay(&self, delay: Option<(&str, Duration)>) {
        self.lock().delay = delay.map(|(method, d)| (method.to_owned(), d, false));
    }

    /// Like [`Fake::set_delay`], but each call is taken at once and only its answer waits: as
    /// when Telegram took a message and its answer is still on the way back.
    pub fn set_answer_delay(&self, delay: Option<(&str, Duration)>) {
        self.lock().delay = delay.map(|(method, d)| (method.to_owned(), d, true));
    }

    /// Makes getWebhookInfo of `bot_id` report `pending` updates and, if given, a delivery error
    /// `seconds_ago` with `message`, as Telegram does when the webhook fails.
    pub fn webhook_trouble(&self, bot_id: i64, pending: u64, error: Option<(u64, &str)>) {
        if let Some(webhook) = self.lock().webhooks.get_mut(&bot_id) {
            webhook.pending = pending;
            webhook.last_error = error.map(|(ago, message)| (now_ms() / 1000 - ago, message.to_owned()));
        }
    }

    /// What getWebhookInfo reports while and after the fake delivers: updates still pending,
    /// and the last delivery error (now), if any.
    fn set_pending(&self, bot_id: i64, pending: u64, error: Option<&str>) {
        if let Some(webhook) = self.lock().webhooks.get_mut(&bot_id) {
            webhook.pending = pending;
            if let Some(message) = error {
                webhook.last_error =
                    Some((now_ms() / 1000, format!("Wrong response from the webhook: {message}")));
            }
        }
    }

    /// Whether the user of `chat_id` has blocked the bot (sends to them get 403).
    pub fn set_blocked(&self, chat_id: i64, blocked: bool) {
        let mut inner = self.lock();
        if blocked {
            inner.blocked.insert(chat_id);
        } else {
            inner.blocked.remove(&chat_id);
        }
    }

    /// Answers the next call of `method` (of any bot) with `failure`.
    pub fn fail_next(&self, method: &str, failure: Failure) {
        self.fail_times(method, failure, 1);
    }

    /// Answers the next `times` calls of `method` (of any bot) with `failure`.
    pub fn fail_times(&self, method: &str, failure: Failure, times: u32) {
        self.lock().fail_next = (times > 0).then(|| (method.to_owned(), failure, times));
    }

    /// Returns once `n` calls have arrived that a delay holds (or held), before or after they
    /// were taken.
    pub async fn held(&self, n: u64) {
        // The sender lives as long as `self`: the wait cannot fail.
        let _ = self.held.subscribe().wait_for(|held| *held >= n).await;
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.iter().enumerate().map(|(i, call)| call.call(i + 1)).collect()
    }

    /// The Bot API routes plus the `/__fake/…` control routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/__fake/calls", get(calls))
            .route("/__fake/reset", post(reset))
            .route("/__fake/limits", post(set_limits))
            .route("/__fake/blocked", post(block_chat))
            .route("/__fake/webhook_trouble", post(set_webhook_trouble))
            .route("/__fake/deliver", post(deliver))
            .route("/__fake/delay", post(set_delay))
            .route("/file/{bot}/{*path}", get(download))
            .route("/{bot}/{method}", any(bot_api))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD_BYTES))
            .with_state(self.clone())
    }
}

/// The bot id of a path segment `bot<id>:<secret>`, if it is well formed.
fn bot_id(segment: &str) -> Option<i64> {
    let token = segment.strip_prefix("bot")?;
    let (id, secret) = token.split_once(':')?;
    let valid =
        !secret.is_empty() && secret.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    id.parse().ok().filter(|id: &i64| *id > 0 && valid)
}

fn telegram_error(status: StatusCode, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({ "ok": false, "error_code": status.as_u16(), "description": description });
    if let Some(parameters) = parameters {
        body["parameters"] = parameters;
    }
    (status, Json(body)).into_response()
}

async fn bot_api(
    State(fake): State<Fake>,
    Path((segment, method)): Path<(String, String)>,
    Query(query): Query<Map<String, Value>>,
    request: Request,
) -> Response {
    let Some(bot_id) = bot_id(&segment) else {
        return telegram_error(StatusCode::NOT_FOUND, "Not Found", None);
    };
    let client = request
        .headers()
        .get(header::USER_AGENT)
        .map(|agent| String::from_utf8_lossy(agent.as_bytes()).into_owned())
        .unwrap_or_default();
    let mut params = query;
    match read_params(&fake, request).await {
        Ok(body) => params.extend(body),
        Err(problem) => {
            return telegram_error(StatusCode::BAD_REQUEST, &format!("Bad Request: {problem}"), None);
        }
    }
    let params = Value::Object(params);
    let method = methods::canonical(&method);
    let delay = fake.lock().delay.clone().filter(|(slow, ..)| *slow == method);
    let hold = || async {
        if let Some((_, delay, _)) = delay {
            fake.held.send_modify(|held| *held += 1);
            tokio::time::sleep(delay).await;
        }
    };
    let answer_waits = delay.as_ref().is_some_and(|(.., answer)| *answer);
    if !answer_waits {
        hold().await;
    }
    let recorded = params.to_string().into_boxed_str();
    let answer = {
        let mut inner = fake.lock();
        let answer = methods::answer(&mut inner, bot_id, &method, &params, Instant::now());
        let (status, client) = (answer.status().as_u16(), client.into_boxed_str());
        inner.calls.push(Recorded { bot_id, method, params: recorded, at_ms: now_ms(), status, client });
        answer
    };
    fake.recorded.notify_waiters();
    if answer_waits {
        hold().await;
    }
    match answer {
        Answer::Ok(result) => Json(json!({ "ok": true, "result": result })).into_response(),
        Answer::Error { status, description, parameters } => telegram_error(status, &description, parameters),
    }
}

/// The parameters of a call's body: JSON, or multipart with uploaded files stored and replaced
/// by their new file_id. An empty body has no parameters.
async fn read_params(fake: &Fake, request: Request) -> Result<Map<String, Value>, String> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &()).await.map_err(|e| e.body_text())?;
        let mut params = Map::new();
        let mut uploads = Map::new();
        while let Some(field) = multipart.next_field().await.map_err(|e| e.body_text())? {
            let name = field.name().unwrap_or_default().to_owned();
            let is_file = field.file_name().is_some();
            let bytes = field.bytes().await.map_err(|e| e.body_text())?;
            if is_file {
                uploads.insert(name, Value::String(methods::store_file(&mut fake.lock(), bytes.to_vec())));
                continue;
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            // Multipart carries nested values (reply_markup, allowed_updates) as JSON text.
            let value = serde_json::from_str::<Value>(&text)
                .ok()
                .filter(|v| v.is_object() || v.is_array())
                .unwrap_or(Value::String(text));
            params.insert(name, value);
        }
        // A file goes in its own part, named by an `attach://<part>` parameter, or directly in
        // the parameter's part; either way the parameter becomes the new file_id.
        for value in params.values_mut() {
            if let Some(file_id) =
                value.as_str().and_then(|v| v.strip_prefix("attach://")).and_then(|p| uploads.remove(p))
            {
                *value = file_id;
            }
        }
        params.extend(uploads);
        return Ok(params);
    }
    let bytes = axum::body::to_bytes(request.into_body(), MAX_UPLOAD_BYTES)
        .await
        .map_err(|_| "request too large".to_owned())?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err("parameters must be a JSON object".to_owned()),
    }
}

async fn download(State(fake): State<Fake>, Path((segment, path)): Path<(String, String)>) -> Response {
    if bot_id(&segment).is_none() {
        return telegram_error(StatusCode::NOT_FOUND, "Not Found", None);
    }
    let inner = fake.lock();
    let file = path.strip_prefix("files/").and_then(|file_id| inner.files.get(file_id));
    match file {
        Some((_, bytes)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes.clone()).into_response()
        }
        None => telegram_error(StatusCode::NOT_FOUND, "Not Found", None),
    }
}

#[derive(Deserialize)]
struct CallsQuery {
    method: Option<String>,
    /// Only calls whose `text` parameter is this.
    text: Option<String>,
    /// Answer once this many of the matching calls succeeded, or after `wait_ms` (default 60 s).
    at_least: Option<usize>,
    wait_ms: Option<u64>,
}

impl CallsQuery {
    fn matches(&self, call: &Recorded) -> bool {
        /// The one parameter a query looks at, read without building the others.
        #[derive(Deserialize)]
        struct Text<'a> {
            #[serde(borrow)]
            text: Option<std::borrow::Cow<'a, str>>,
        }
        let text = || serde_json::from_str::<Text>(&call.params).ok().and_then(|p| p.text);
        self.method.as_ref().is_none_or(|m| call.method == *m)
            && self.text.as_ref().is_none_or(|t| text().is_some_and(|text| text == t.as_str()))
    }
}

async fn calls(State(fake): State<Fake>, Query(query): Query<CallsQuery>) -> Json<Vec<Call>> {
    if let Some(wanted) = query.at_least {
        // Each call is looked at once, as it arrives (a broadcast's wait sees a million), and
        // counted again from the start if the log was reset meanwhile.
        let (mut resets, mut looked, mut found) = (fake.lock().resets, 0, 0);
        let mut enough = || {
            let inner = fake.lock();
            if inner.resets != resets {
                (resets, looked, found) = (inner.resets, 0, 0);
            }
            let new = &inner.calls[looked..];
            found += new.iter().filter(|c| c.status == 200 && query.matches(c)).count();
            looked = inner.calls.len();
            found >= wanted
        };
        let waiting = async {
            loop {
                // Listen before looking, so that a call recorded in between is not missed.
                let recorded = fake.recorded.notified();
                tokio::pin!(recorded);
                recorded.as_mut().enable();
                if enough() {
                    return;
                }
                recorded.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(query.wait_ms.unwrap_or(60_000)), waiting).await;
    }
    let inner = fake.lock();
    let calls = inner.calls.iter().enumerate().filter(|(_, c)| query.matches(c));
    Json(calls.map(|(i, call)| call.call(i + 1)).collect())
}

async fn reset(State(fake): State<Fake>) -> StatusCode {
    let mut inner = fake.lock();
    inner.calls.clear();
    inner.resets += 1;
    inner.limits.clear();
    inner.blocked.clear();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct LimitsBody {
    enabled: bool,
}

async fn set_limits(State(fake): State<Fake>, Json(body): Json<LimitsBody>) -> StatusCode {
    fake.lock().limits = Limits::new(body.enabled);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct DelayBody {
    method: String,
    /// 0 makes the method fast again.
    ms: u64,
    /// Take each call at once and hold only its answer.
    #[serde(default)]
    answer: bool,
}

async fn set_delay(State(fake): State<Fake>, Json(body): Json<DelayBody>) -> StatusCode {
    let delay = (body.ms > 0).then(|| (body.method.as_str(), Duration::from_millis(body.ms)));
    if body.answer {
        fake.set_answer_delay(delay)
    } else {
        fake.set_delay(delay)
    }
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct BlockBody {
    chat_id: i64,
}

/// From now on the user of `chat_id` has blocked the bot.
async fn block_chat(State(fake): State<Fake>, Json(body): Json<BlockBody>) -> StatusCode {
    fake.set_blocked(body.chat_id, true);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct TroubleBody {
    bot_id: i64,
    pending: u64,
    /// Seconds ago and text of the last delivery error, if any.
    error: Option<(u64, String)>,
}

/// From now on getWebhookInfo reports this trouble with the bot's webhook.
async fn set_webhook_trouble(State(fake): State<Fake>, Json(body): Json<TroubleBody>) -> StatusCode {
    let error = body.error.as_ref().map(|(ago, message)| (*ago, message.as_str()));
    fake.webhook_trouble(body.bot_id, body.pending, error);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct DeliverQuery {
    bot_id: i64,
    /// The capture's pace: 1 as recorded, 5 five times faster; none or 0: as fast as the
    /// webhook's connections allow.
    speed: Option<f64>,
    /// Give an update up after this many seconds unacknowledged (default 60).
    give_up_secs: Option<u64>,
}

/// Telegram's side of a webhook: delivers the updates of the body (a capture, one JSON line
/// each) to the bot's registered webhook as Telegram does (see [`crate::replay`]), reporting
/// them pending meanwhile and the last failure in getWebhookInfo; answers when every update is
/// acknowledged or given up, with a summary.
async fn deliver(State(fake): State<Fake>, Query(query): Query<DeliverQuery>, body: String) -> Response {
    let updates = match crate::replay::read_capture(&body) {
        Ok(updates) => updates,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    };
    let Some(target) = fake.lock().webhooks.get(&query.bot_id).cloned() else {
        return (StatusCode::CONFLICT, Json(json!({ "error": "the bot has no webhook: setWebhook first" })))
            .into_response();
    };
    let webhook = crate::replay::Webhook {
        url: target.url,
        secret: target.secret,
        max_connections: target.max_connections as usize,
        timeout: Duration::from_secs(60),
        give_up_after: Duration::from_secs(query.give_up_secs.unwrap_or(60)),
    };
    let arrival = match query.speed {
        Some(speed) if speed > 0.0 => crate::replay::Arrival::Capture { speed },
        _ => crate::replay::Arrival::Closed,
    };
    let total = updates.len() as u64;
    fake.set_pending(query.bot_id, total, None);
    let progress = Arc::new(crate::replay::Progress::default());
    let client = reqwest::Client::new();
    let delivered = crate::replay::deliver_all(&client, &webhook, updates, &arrival, progress).await;
    let acknowledged = delivered.iter().filter(|d| d.acknowledged).count() as u64;
    let last_error = delivered.iter().filter_map(|d| d.last_error.clone()).next_back();
    fake.set_pending(query.bot_id, total - acknowledged, last_error.as_deref());
    let attempts: u64 = delivered.iter().map(|d| u64::from(d.attempts)).sum();
    Json(json!({ "delivered": total, "acknowledged": acknowledged, "attempts": attempts })).into_response()
}

/// Binds the fake as a process; `run_until_stopped` on the result serves.
pub async fn build(settings: FakeTelegramSettings, metrics: Arc<Metrics>) -> anyhow::Result<Server> {
    let fake = Fake::new(settings.enforce_limits);
    let readiness = Readiness::new(|| async { Vec::new() });
    let tasks = TaskTracker::new();
    Server::bind("fake telegram", settings.listen, fake.router(), &settings.common, metrics, readiness, tasks)
        .await
}
