//! Error reports (Sentry, through its test transport): a failed update and a panic each make
//! exactly one report, tagged with release, environment, bot, update kind, a hashed chat and
//! Nginx's request id, and carrying no message text, chat id, token or secret.

use std::sync::Arc;

use botfleet::settings::{Secret, Source, TelemetrySettings};
use botfleet::telemetry;
use sentry::protocol::Event;
use serde_json::Value;

use crate::helpers::{MAIN_BOT, Running, TestDb, spawn_fake, spawn_worker_with, text_update, unique};

/// The user's chat, which no report may name.
const CHAT: i64 = 4_242_017_953;

/// Reports of this test process go to `transport`, with the options the binary uses.
fn capture_reports() -> (Arc<sentry::test::TestTransport>, sentry::ClientInitGuard) {
    let settings =
        TelemetrySettings::load(&Source::from_pairs([("BOTFLEET_ENVIRONMENT", "staging")])).unwrap();
    let transport = sentry::test::TestTransport::new();
    let mut options =
        telemetry::sentry_options(&settings, vec![Secret::new(MAIN_BOT.token), Secret::new(MAIN_BOT.secret)]);
    options.dsn = Some("https://public@sentry.invalid/1".parse().unwrap());
    options.transport = Some(Arc::new(transport.clone()));
    (transport, sentry::init(options))
}

/// Delivers `update` as Nginx would, with its request id.
async fn deliver_with_request_id(worker: &Running, update: &Value, request_id: &str) -> u16 {
    reqwest::Client::new()
        .post(worker.url("/webhook/main"))
        .header("x-telegram-bot-api-secret-token", MAIN_BOT.secret)
        .header("x-request-id", request_id)
        .header("content-type", "application/json")
        .body(update.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The one report in `transport` (failing if there is not exactly one), as JSON, after
/// checking what every report must and must not carry.
fn the_one_report(
    transport: &sentry::test::TestTransport,
    (request_id, chat): (&str, i64),
    forbidden: &[&str],
) -> Event<'static> {
    let events = transport.fetch_and_clear_events();
    assert_eq!(events.len(), 1, "exactly one report expected: {events:#?}");
    let event = events.into_iter().next().unwrap();
    // Without what Sentry makes up at random (ids, the time), which may hold any digits.
    let mut json = serde_json::to_value(&event).unwrap();
    for field in ["event_id", "timestamp"] {
        json.as_object_mut().unwrap().remove(field);
    }
    if let Some(contexts) = json["contexts"].as_object_mut() {
        contexts.remove("trace");
    }
    let json = json.to_string();
    for secret in [MAIN_BOT.token, MAIN_BOT.secret].iter().chain(forbidden) {
        assert!(!json.contains(secret), "the report carries {secret:?}: {json}");
    }
    assert_eq!(event.release.as_deref(), Some(concat!("botfleet@", env!("CARGO_PKG_VERSION"))));
    assert_eq!(event.environment.as_deref(), Some("staging"));
    let tag = |key: &str| event.tags.get(key).cloned();
    assert_eq!(tag("bot").as_deref(), Some("main"));
    assert_eq!(tag("update_kind").as_deref(), Some("message"));
    assert_eq!(tag("request_id").as_deref(), Some(request_id));
    assert_eq!(
        tag("chat"),
        Some(telemetry::chat_tag(MAIN_BOT.secret.as_bytes(), chat)),
        "a keyed hash of the chat"
    );
    event
}

#[tokio::test]
async fn a_failed_update_and_a_panic_each_make_one_tagged_report_without_secrets() {
    let (transport, _guard) = capture_reports();
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &[]).await;

    // A handler error: Postgres refuses a text with a NUL character.
    let chat = CHAT.to_string();
    let poison = text_update(1, CHAT, "my secret diary \u{0} entry");
    assert_eq!(deliver_with_request_id(&worker, &poison, "req-failed-1").await, 500);
    let report = the_one_report(&transport, ("req-failed-1", CHAT), &["my secret diary", &chat]);
    assert_eq!(report.level, sentry::Level::Error);
    assert!(report.message.as_deref().is_some_and(|m| m.starts_with("update failed:")), "{report:?}");

    // A panic: the author's post comes back from Postgres with a NULL text the code cannot
    // expect (schema drift), and listing their posts panics in the handler. (Another chat: the
    // first one waits for its failed update's redelivery.)
    let (other, chat) = (CHAT + 1, (CHAT + 1).to_string());
    let post = text_update(2, other, "a fine post");
    assert_eq!(deliver_with_request_id(&worker, &post, "req-post-2").await, 200);
    assert!(transport.fetch_and_clear_events().is_empty(), "a handled update makes no report");
    let owner = db.owner().await;
    owner
        .batch_execute("ALTER TABLE posts ALTER COLUMN text DROP NOT NULL; UPDATE posts SET text = NULL")
        .await
        .unwrap();
    let status = deliver_with_request_id(&worker, &text_update(3, other, "/my"), "req-panic-3").await;
    assert_eq!(status, 500, "a panicking handler answers 500 so that Telegram redelivers");
    let report = the_one_report(&transport, ("req-panic-3", other), &["a fine post", &chat]);
    assert_eq!(report.level, sentry::Level::Fatal, "a panic is reported as such: {report:?}");
    let exception = report.exception.values.first().expect("a panic report carries its exception");
    assert!(
        exception.value.as_deref().is_some_and(|v| v.contains("text")),
        "the panic's message names the column: {exception:?}"
    );
}
