//! Delivering updates to a webhook the way Telegram does, shared by `loadtest replay` and the
//! fake Telegram's delivery mode (`POST /__fake/deliver`).
//!
//! Telegram's semantics, as far as a sender can tell:
//! - at most `max_connections` deliveries in flight, each a `POST` of one update with the
//!   `X-Telegram-Bot-Api-Secret-Token` header;
//! - one update of a chat at a time, in `update_id` order: the next one of a chat goes out once
//!   the previous one was acknowledged (or given up);
//! - a delivery is acknowledged by any 2xx; anything else, or no answer within the timeout, is
//!   redelivered later: after `Retry-After` when the answer has one, else after a backoff that
//!   doubles from one second (with jitter), until `give_up_after` has passed since the update
//!   was due.
//!
//! Updates are released at their due times (open loop: a capture's own times scaled by a speed,
//! or a constant, ramping or stepped rate) or as fast as the connections allow (closed loop).
//! An update's latency runs from its due time to its acknowledgement, so a stalled server shows
//! up as latency rather than as fewer requests (no coordinated omission).

/// The exactly-once audit of a replay: test tooling, built only with the `test-tooling` feature.
#[cfg(feature = "test-tooling")]
pub mod audit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

/// One update of a capture (a line of JSONL): when it arrived, in milliseconds since the
/// capture's clock started (any origin: only differences count), and the update itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Recorded {
    pub at_ms: u64,
    /// The bot it was sent to, in a worker's capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<String>,
    pub update: Value,
}

impl Recorded {
    pub fn update_id(&self) -> Option<i64> {
        self.update["update_id"].as_i64()
    }

    /// The chat whose order the update belongs to: its message's chat, else its sender.
    pub fn chat(&self) -> Option<i64> {
        let body = self.update.as_object()?.iter().find(|(key, _)| *key != "update_id")?.1;
        body["chat"]["id"]
            .as_i64()
            .or_else(|| body["message"]["chat"]["id"].as_i64())
            .or_else(|| body["from"]["id"].as_i64())
    }
}

/// Reads a capture: one [`Recorded`] per line, blank lines skipped. A bad line is an error
/// naming it; the result is in `update_id` order (captures of several workers interleave),
/// each update once (a worker records a redelivery again).
pub fn read_capture(text: &str) -> Result<Vec<Recorded>, String> {
    let mut updates = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let recorded: Recorded = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        if recorded.update_id().is_none() {
            return Err(format!("line {}: the update has no update_id", n + 1));
        }
        updates.push(recorded);
    }
    updates.sort_by_key(|r| r.update_id());
    updates.dedup_by_key(|r| r.update_id());
    Ok(updates)
}

/// `update` with nothing left that identifies a person, keeping what replaying it needs:
/// - every user and chat id becomes another, the same one wherever it appears (a keyed hash
///   with `key`, sign kept), so each chat's sequence of updates stays whole;
/// - names, usernames and titles become placeholders derived from the same hash;
/// - texts and captions keep their first word if it is a command, and otherwise every
///   character becomes `x` (spaces kept, UTF-16 length kept, so entity offsets stay valid);
/// - file ids are hashed (the same file stays the same file); phone numbers, e-mails, vCards
///   and coordinates are blanked.
///
/// `update_id`s, message ids, dates, kinds and callback data (the bot's own) are kept.
pub fn anonymise(update: &Value, key: &[u8]) -> Value {
    let hash = |text: &str| -> u64 {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new().chain_update(key).chain_update(text.as_bytes()).finalize();
        digest[..8].iter().fold(0u64, |n, b| (n << 8) | u64::from(*b))
    };
    let id = |n: i64| -> i64 {
        let anonymous = 1 + (hash(&n.unsigned_abs().to_string()) % 1_000_000_000_000) as i64;
        if n < 0 { -anonymous } else { anonymous }
    };
    match update {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| {
                    let anonymous = match (name.as_str(), value) {
                        ("id" | "user_id" | "chat_id", Value::Number(n)) => n.as_i64().map(|n| id(n).into()),
                        ("first_name" | "last_name" | "title", Value::String(s)) => {
                            Some(format!("Anon {:x}", hash(s) % 0xffff).into())
                        }
                        ("username", Value::String(s)) => {
                            Some(format!("anon{:x}", hash(s) % 0xffff_ffff).into())
                        }
                        ("text" | "caption" | "query", Value::String(s)) => Some(blank_text(s).into()),
                        ("file_id" | "file_unique_id", Value::String(s)) => {
                            Some(format!("anon{:016x}", hash(s)).into())
                        }
                        ("phone_number" | "email" | "vcard", Value::String(_)) => Some("".into()),
                        ("latitude" | "longitude", Value::Number(_)) => Some(0.into()),
                        _ => None,
                    };
                    (name.clone(), anonymous.unwrap_or_else(|| anonymise(value, key)))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|item| anonymise(item, key)).collect()),
        other => other.clone(),
    }
}

/// A text's command (its first word, if it starts with `/`) and `x` for every other character
/// (two for those UTF-16 counts twice), whitespace kept.
fn blank_text(text: &str) -> String {
    let command_end =
        if text.starts_with('/') { text.find(char::is_whitespace).unwrap_or(text.len()) } else { 0 };
    let (command, rest) = text.split_at(command_end);
    let blank =
        rest.chars().map(|c| if c.is_whitespace() { c.to_string() } else { "x".repeat(c.len_utf16()) });
    command.chars().map(String::from).chain(blank).collect()
}

/// Where and how updates are delivered.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
    pub max_connections: usize,
    /// A delivery without an answer within this is failed and redelivered.
    pub timeout: Duration,
    /// An update still unacknowledged this long after it was due is given up.
    pub give_up_after: Duration,
}

/// When updates are released.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// At the capture's own times divided by `speed` (2.0: twice as fast).
    Capture { speed: f64 },
    /// `rate` updates a second.
    Constant { rate: f64 },
    /// From `from` to `to` updates a second, linearly over `over`, then `to`.
    Ramp { from: f64, to: f64, over: Duration },
    /// Each rate for `every`, in turn; the last one then holds.
    Step { rates: Vec<f64>, every: Duration },
    /// As fast as the connections allow: no due times.
    Closed,
}

impl Arrival {
    /// The due time of each update after the start (`None`: closed loop), given the capture's
    /// own times.
    pub fn due_times(&self, at_ms: &[u64]) -> Vec<Option<Duration>> {
        let first = at_ms.first().copied().unwrap_or(0);
        let mut t = 0.0f64;
        at_ms
            .iter()
            .enumerate()
            .map(|(n, at)| {
                let due = match self {
                    Arrival::Closed => return None,
                    Arrival::Capture { speed } => at.saturating_sub(first) as f64 / 1000.0 / speed.max(1e-9),
                    Arrival::Constant { rate } => n as f64 / rate.max(1e-9),
                    Arrival::Ramp { .. } | Arrival::Step { .. } => {
                        let now = t;
                        t += 1.0 / self.rate_at(t).max(1e-9);
                        now
                    }
                };
                Some(Duration::from_secs_f64(due))
            })
            .collect()
    }

    fn rate_at(&self, t: f64) -> f64 {
        match self {
            Arrival::Ramp { from, to, over } => {
                let share = (t / over.as_secs_f64().max(1e-9)).min(1.0);
                from + (to - from) * share
            }
            Arrival::Step { rates, every } => {
                let step = (t / every.as_secs_f64().max(1e-9)) as usize;
                rates.get(step).or(rates.last()).copied().unwrap_or(1.0)
            }
            Arrival::Constant { rate } => *rate,
            Arrival::Capture { .. } | Arrival::Closed => 1.0,
        }
    }
}

/// How one update's delivery ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub update_id: i64,
    /// Answered 2xx (by the last attempt); false: given up.
    pub acknowledged: bool,
    pub attempts: u32,
    /// When it was due, after the start.
    pub due: Duration,
    /// From due to acknowledged (or given up).
    pub latency: Duration,
    /// The last failure, if any attempt failed: a status or an error.
    pub last_error: Option<String>,
}

/// What is under way, for progress lines and the fake's `pending_update_count`.
#[derive(Debug, Default)]
pub struct Progress {
    pub released: AtomicU64,
    pub acknowledged: AtomicU64,
    pub given_up: AtomicU64,
    /// Failed attempts (each followed by a redelivery or giving up).
    pub failures: AtomicU64,
    /// The longest latency (µs) acknowledged since whoever reports progress last took it.
    pub slowest_us: AtomicU64,
}

/// Delivers `updates` (in `update_id` order) to `webhook`, released by `arrival`; returns how
/// each delivery ended, in no particular order.
pub async fn deliver_all(
    client: &reqwest::Client,
    webhook: &Webhook,
    updates: Vec<Recorded>,
    arrival: &Arrival,
    progress: Arc<Progress>,
) -> Vec<Delivered> {
    let at_ms: Vec<u64> = updates.iter().map(|u| u.at_ms).collect();
    let due = arrival.due_times(&at_ms);
    // Each chat's updates in order; chats without one each go alone.
    let mut chats: BTreeMap<Option<i64>, Vec<(Recorded, Option<Duration>)>> = BTreeMap::new();
    let mut loners = Vec::new();
    for (update, due) in updates.into_iter().zip(due) {
        match update.chat() {
            Some(chat) => chats.entry(Some(chat)).or_default().push((update, due)),
            None => loners.push(vec![(update, due)]),
        }
    }
    let connections = Arc::new(tokio::sync::Semaphore::new(webhook.max_connections.max(1)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for sequence in chats.into_values().chain(loners) {
        let (client, webhook, connections, progress) =
            (client.clone(), webhook.clone(), connections.clone(), progress.clone());
        tasks.spawn(async move {
            let mut results = Vec::with_capacity(sequence.len());
            for (update, due) in sequence {
                let due = match due {
                    Some(due) => {
                        tokio::time::sleep_until(start + due).await;
                        start + due
                    }
                    None => Instant::now(),
                };
                progress.released.fetch_add(1, Ordering::Relaxed);
                results.push(deliver(&client, &webhook, &update, due - start, &connections, &progress).await);
            }
            results
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap_or_default());
    }
    all
}

/// Delivers one update until it is acknowledged or given up, each attempt on one of the
/// connections.
async fn deliver(
    client: &reqwest::Client,
    webhook: &Webhook,
    update: &Recorded,
    due: Duration,
    connections: &tokio::sync::Semaphore,
    progress: &Progress,
) -> Delivered {
    let due_at = Instant::now();
    let body = update.update.to_string();
    let mut delivered = Delivered {
        update_id: update.update_id().unwrap_or_default(),
        acknowledged: false,
        attempts: 0,
        due,
        latency: Duration::ZERO,
        last_error: None,
    };
    loop {
        delivered.attempts += 1;
        let answer = {
            // The semaphore is never closed.
            let _connection = connections.acquire().await.ok();
            client
                .post(&webhook.url)
                .header("x-telegram-bot-api-secret-token", &webhook.secret)
                .header("content-type", "application/json")
                .timeout(webhook.timeout)
                .body(body.clone())
                .send()
                .await
        };
        let retry_after = match answer {
            Ok(response) if response.status().is_success() => {
                delivered.acknowledged = true;
                delivered.latency = due_at.elapsed();
                progress.acknowledged.fetch_add(1, Ordering::Relaxed);
                progress.slowest_us.fetch_max(delivered.latency.as_micros() as u64, Ordering::Relaxed);
                return delivered;
            }
            Ok(response) => {
                delivered.last_error = Some(format!("HTTP {}", response.status().as_u16()));
                response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(Duration::from_secs)
            }
            Err(e) => {
                delivered.last_error =
                    Some(if e.is_timeout() { "timed out".to_owned() } else { e.to_string() });
                None
            }
        };
        progress.failures.fetch_add(1, Ordering::Relaxed);
        let wait = retry_after.unwrap_or_else(|| backoff(delivered.attempts));
        if due_at.elapsed() + wait > webhook.give_up_after {
            delivered.latency = due_at.elapsed();
            progress.given_up.fetch_add(1, Ordering::Relaxed);
            return delivered;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Telegram-like backoff after the `attempt`-th failure: 1 s, 2 s, 4 s … at most 60 s, with up
/// to a quarter more at random so that failed deliveries do not come back all at once.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_secs(1 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60));
    let jitter =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
            % 250;
    base + base * jitter / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(update_id: i64, at_ms: u64, chat: i64) -> Recorded {
        let update =
            serde_json::json!({"update_id": update_id, "message": {"chat": {"id": chat}, "text": "hi"}});
        Recorded { at_ms, bot: None, update }
    }

    #[test]
    fn a_capture_is_read_in_update_id_order_and_bad_lines_are_named() {
        let text = format!(
            "{}\n\n{}\n{}\n",
            serde_json::to_string(&recorded(2, 10, 5)).unwrap(),
            serde_json::to_string(&recorded(1, 20, 5)).unwrap(),
            serde_json::to_string(&recorded(2, 30, 5)).unwrap()
        );
        let capture = read_capture(&text).unwrap();
        assert_eq!(capture[1].at_ms, 10, "a recorded redelivery is dropped");
        assert_eq!(capture.iter().map(|r| r.update_id()).collect::<Vec<_>>(), [Some(1), Some(2)]);
        assert_eq!(capture[0].chat(), Some(5));
        assert!(read_capture("{\"at_ms\": 1}\n").unwrap_err().starts_with("line 1:"));
        assert!(read_capture("{\"at_ms\": 1, \"update\": {}}").unwrap_err().contains("no update_id"));
    }

    #[test]
    fn due_times_follow_the_capture_the_rate_a_ramp_and_steps() {
        let at = [1000, 1500, 3000];
        let secs = |arrival: Arrival| -> Vec<f64> {
            arrival.due_times(&at).into_iter().map(|d| d.unwrap().as_secs_f64()).collect()
        };
        assert_eq!(secs(Arrival::Capture { speed: 2.0 }), [0.0, 0.25, 1.0]);
        assert_eq!(secs(Arrival::Constant { rate: 4.0 }), [0.0, 0.25, 0.5]);
        assert_eq!(
            secs(Arrival::Step { rates: vec![1.0, 2.0], every: Duration::from_secs(1) }),
            [0.0, 1.0, 1.5]
        );
        let ramp = secs(Arrival::Ramp { from: 1.0, to: 3.0, over: Duration::from_secs(2) });
        assert_eq!(ramp[..2], [0.0, 1.0]);
        assert!((ramp[2] - 1.5).abs() < 1e-9, "at 1 s the ramp is at 2/s: {ramp:?}");
        assert_eq!(Arrival::Closed.due_times(&at), [None, None, None]);
    }

    #[test]
    fn anonymised_updates_keep_their_shape_and_chat_but_nothing_personal() {
        let original = serde_json::json!({"update_id": 7, "message": {
            "message_id": 3, "date": 1700000000,
            "from": {"id": 4242, "is_bot": false, "first_name": "Ada", "last_name": "Lovelace", "username": "ada"},
            "chat": {"id": 4242, "type": "private", "first_name": "Ada", "username": "ada"},
            "text": "/start héllo 😀 world",
            "photo": [{"file_id": "AgAD-secret", "file_unique_id": "AQAD", "width": 1, "height": 1}],
            "contact": {"phone_number": "+44123", "first_name": "Ada"},
        }});
        let anonymous = anonymise(&original, b"key");
        let text = anonymous.to_string();
        for personal in ["4242", "Ada", "Lovelace", "\"ada\"", "héllo", "world", "AgAD-secret", "+44123"] {
            assert!(!text.contains(personal), "{personal} is still there: {text}");
        }
        let message = &anonymous["message"];
        assert_eq!(message["from"]["id"], message["chat"]["id"], "the same id maps to the same id");
        assert_eq!(message["text"], "/start xxxxx xx xxxxx", "command kept, UTF-16 length kept");
        assert_eq!((anonymous["update_id"].clone(), message["message_id"].clone()), (7.into(), 3.into()));
        assert_eq!(anonymise(&original, b"key"), anonymous, "deterministic for one key");
        assert_ne!(anonymise(&original, b"other")["message"]["chat"]["id"], message["chat"]["id"]);
        let group = anonymise(&serde_json::json!({"chat": {"id": -1001234}}), b"key");
        assert!(group["chat"]["id"].as_i64().unwrap() < 0, "a group stays a group");
    }

    /// A webhook on a free port: notes each delivery (update id, chat, arrival) and answers what
    /// `answer` says for it.
    async fn sink(
        answer: impl Fn(i64, u32) -> (u16, Option<&'static str>) + Send + Sync + 'static,
    ) -> (String, Arc<std::sync::Mutex<Vec<(i64, i64, Instant)>>>, Arc<AtomicU64>) {
        use axum::http::StatusCode;
        let seen: Arc<std::sync::Mutex<Vec<(i64, i64, Instant)>>> = Arc::default();
        let (in_flight, most) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let answer = Arc::new(answer);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let (seen, most) = (seen.clone(), most.clone());
                move |headers: axum::http::HeaderMap, body: String| async move {
                    assert_eq!(headers["x-telegram-bot-api-secret-token"], "s3cret");
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let update: Value = serde_json::from_str(&body).unwrap_or_default();
                    let (id, chat) = (
                        update["update_id"].as_i64().unwrap_or(0),
                        update["message"]["chat"]["id"].as_i64().unwrap_or(0),
                    );
                    let attempt = {
                        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                        seen.push((id, chat, Instant::now()));
                        seen.iter().filter(|(i, _, _)| *i == id).count() as u32
                    };
                    // Long enough for deliveries to overlap.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let (status, retry_after) = answer(id, attempt);
                    let mut response = axum::response::IntoResponse::into_response(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    );
                    if let Some(after) = retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", axum::http::HeaderValue::from_static(after));
                    }
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}/hook", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen, most)
    }

    fn webhook(url: &str, max_connections: usize) -> Webhook {
        Webhook {
            url: url.to_owned(),
            secret: "s3cret".to_owned(),
            max_connections,
            timeout: Duration::from_secs(5),
            give_up_after: Duration::from_secs(10),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn updates_arrive_at_the_rate_asked_within_two_percent() {
        let (url, seen, _) = sink(|_, _| (200, None)).await;
        // 1,000 a second for 3 s, each update its own chat so that none waits for another.
        let updates: Vec<Recorded> = (0..3000).map(|n| recorded(n + 1, 0, n + 1)).collect();
        let delivered = deliver_all(
            &reqwest::Client::new(),
            &webhook(&url, 100),
            updates,
            &Arrival::Constant { rate: 1000.0 },
            Arc::default(),
        )
        .await;
        assert!(delivered.iter().all(|d| d.acknowledged && d.attempts == 1));
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let first = seen.iter().map(|s| s.2).min().unwrap_or_else(Instant::now);
        let last = seen.iter().map(|s| s.2).max().unwrap_or_else(Instant::now);
        let rate = (seen.len() - 1) as f64 / (last - first).as_secs_f64();
        assert!((rate - 1000.0).abs() / 1000.0 <= 0.02, "arrivals at {rate:.1}/s");
    }

    #[tokio::test]
    async fn failed_deliveries_come_back_after_retry_after_in_chat_order_within_max_connections() {
        // Update 2 is refused once with Retry-After: 1; the chat's next update waits for it.
        let (url, seen, most) =
            sink(|id, attempt| if id == 2 && attempt == 1 { (503, Some("1")) } else { (200, None) }).await;
        let mut updates: Vec<Recorded> = (1..=3).map(|n| recorded(n, 0, 7)).collect();
        updates.extend((4..=40).map(|n| recorded(n, 0, 100 + n)));
        let progress = Arc::new(Progress::default());
        let started = Instant::now();
        let delivered = deliver_all(
            &reqwest::Client::new(),
            &webhook(&url, 4),
            updates,
            &Arrival::Closed,
            progress.clone(),
        )
        .await;
        assert!(delivered.iter().all(|d| d.acknowledged), "{delivered:?}");
        let second = delivered.iter().find(|d| d.update_id == 2).unwrap_or_else(|| panic!("no update 2"));
        assert_eq!((second.attempts, second.last_error.as_deref()), (2, Some("HTTP 503")));
        assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After is waited out");
        assert_eq!(progress.failures.load(Ordering::Relaxed), 1);
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let chat: Vec<i64> = seen.iter().filter(|s| s.1 == 7).map(|s| s.0).collect();
        assert_eq!(
            chat,
            [1, 2, 2, 3],
            "one update of a chat at a time, in order, the failed one again first"
        );
        assert!(most.load(Ordering::SeqCst) <= 4, "at most max_connections in flight");
        assert!(most.load(Ordering::SeqCst) >= 2, "deliveries of different chats overlap");
    }

    #[tokio::test]
    async fn an_update_never_acknowledged_is_given_up() {
        let (url, _, _) = sink(|_, _| (500, Some("0"))).await;
        let mut hook = webhook(&url, 1);
        hook.give_up_after = Duration::from_millis(300);
        let progress = Arc::new(Progress::default());
        let delivered = deliver_all(
            &reqwest::Client::new(),
            &hook,
            vec![recorded(1, 0, 1)],
            &Arrival::Closed,
            progress.clone(),
        )
        .await;
        assert!(!delivered[0].acknowledged && delivered[0].attempts >= 2, "{delivered:?}");
        assert_eq!(progress.given_up.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn backoff_doubles_from_a_second_and_stops_at_a_minute() {
        for (attempt, base) in [(1, 1), (2, 2), (3, 4), (7, 60), (30, 60)] {
            let wait = backoff(attempt);
            let base = Duration::from_secs(base);
            assert!(wait >= base && wait <= base + base / 4, "attempt {attempt}: {wait:?}");
        }
    }
}
