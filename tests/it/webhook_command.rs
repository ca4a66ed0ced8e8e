//! `botfleet webhook set`: idempotent, patient with Telegram, safe to run from two deploys at
//! once.

use botfleet::fake_telegram::{Failure, Fake};
use botfleet::settings::{self, Source, WebhookSettings};
use botfleet::webhook::{self, Command};

use std::time::Duration;

use crate::helpers::{MAIN_BOT, TestDb, eventually, spawn_fake, spawn_worker_with, unique};

fn webhook_settings(telegram: &str, prefix: &str, extra: &[(&str, &str)]) -> WebhookSettings {
    let mut pairs = MAIN_BOT.settings();
    for (key, value) in [
        (settings::BOTS, "main"),
        (settings::TELEGRAM_API_URL, telegram),
        (settings::WEBHOOK_URL, "https://bots.example.org/webhook"),
        (settings::REDIS_PREFIX, prefix),
    ]
    .iter()
    .chain(extra)
    {
        pairs.push(((*key).to_owned(), (*value).to_owned()));
    }
    pairs.push((settings::REDIS_URL.to_owned(), crate::helpers::redis_url("webhook")));
    WebhookSettings::load(&Source::from_pairs(pairs)).unwrap()
}

/// The setWebhook calls the fake answered, by status.
fn set_calls(fake: &Fake) -> Vec<u16> {
    fake.calls().iter().filter(|c| c.method == "setWebhook").map(|c| c.status).collect()
}

async fn set(settings: &WebhookSettings) -> String {
    webhook::run(Command::Set, settings).await.unwrap().join("\n")
}

#[tokio::test]
async fn set_calls_telegram_only_when_the_webhook_changes() {
    let (fake, telegram) = spawn_fake(false).await;
    let prefix = unique("r");
    let settings = webhook_settings(&telegram, &prefix, &[]);
    assert_eq!(
        set(&settings).await,
        "main: webhook set to https://bots.example.org/webhook/main; commands registered"
    );
    assert_eq!(
        set(&settings).await,
        "main: webhook already set to https://bots.example.org/webhook/main; commands already registered"
    );
    assert_eq!(set_calls(&fake), [200], "an unchanged webhook must not be set again");

    let more_connections = webhook_settings(&telegram, &prefix, &[(settings::WEBHOOK_MAX_CONNECTIONS, "80")]);
    set(&more_connections).await;
    let new_secret =
        webhook_settings(&telegram, &prefix, &[("BOTFLEET_BOT_MAIN_WEBHOOK_SECRET", "another_secret")]);
    set(&new_secret).await;
    assert_eq!(set_calls(&fake), [200, 200, 200], "a new max_connections, then a new secret, are set");
    let sent = fake.calls().into_iter().rfind(|c| c.method == "setWebhook").unwrap();
    assert_eq!(sent.params["secret_token"], "another_secret");
}

/// The setMyCommands calls the fake took.
fn menu_calls(fake: &Fake) -> Vec<serde_json::Value> {
    fake.calls().into_iter().filter(|c| c.method == "setMyCommands").map(|c| c.params).collect()
}

#[tokio::test]
async fn set_registers_the_command_menu_only_when_telegram_shows_another() {
    let (fake, telegram) = spawn_fake(false).await;
    let settings = webhook_settings(&telegram, &unique("r"), &[]);
    set(&settings).await;
    let registered = menu_calls(&fake);
    assert_eq!(registered.len(), 1, "the first deploy registers the menu");
    let names: Vec<&str> = registered[0]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["start", "help", "post", "my", "cancel"], "everyone's commands, in menu order");
    set(&settings).await;
    assert_eq!(menu_calls(&fake).len(), 1, "an unchanged menu is not registered again");

    // Someone changed the menu by hand (with @BotFather, or an older deploy): set puts it back.
    let token = MAIN_BOT.token;
    let other = serde_json::json!({ "commands": [{ "command": "old", "description": "an old menu" }] });
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{telegram}/bot{token}/setMyCommands"))
        .json(&other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(set(&settings).await.ends_with("; commands registered"));
    assert_eq!(menu_calls(&fake).len(), 3, "the hand-made menu, then ours again");
}

#[tokio::test]
async fn set_waits_out_a_429_and_a_conflict_and_two_deploys_at_once_both_succeed() {
    let (fake, telegram) = spawn_fake(false).await;
    let settings = webhook_settings(&telegram, &unique("r"), &[]);
    fake.fail_next("setWebhook", Failure::TooManyRequests(1));
    set(&settings).await;
    assert_eq!(set_calls(&fake), [429, 200]);

    let settings = webhook_settings(&telegram, &unique("r"), &[(settings::WEBHOOK_MAX_CONNECTIONS, "60")]);
    fake.fail_next("setWebhook", Failure::Conflict);
    let (a, b) = tokio::join!(webhook::run(Command::Set, &settings), webhook::run(Command::Set, &settings));
    assert!(a.is_ok() && b.is_ok(), "both deploys must succeed: {a:?} {b:?}");
    assert_eq!(set_calls(&fake)[2], 409, "one of them met the conflict");
    let info = webhook::run(Command::Info, &settings).await.unwrap().join("\n");
    assert!(info.contains("max_connections=60"), "{info}");
}

#[tokio::test]
async fn one_worker_at_a_time_exports_what_telegram_says_of_the_webhook() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let prefix = unique("r");
    set(&webhook_settings(&telegram, &prefix, &[])).await;
    let error = "Wrong response from the webhook: 502 Bad Gateway";
    fake.webhook_trouble(MAIN_BOT.id(), 7, Some((30, error)));
    let watch = [("BOTFLEET_WEBHOOK_WATCH_SECS", "1")];
    let asked = || fake.calls().iter().filter(|c| c.method == "getWebhookInfo").count();
    let before = asked();
    let workers = [
        spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &watch).await,
        spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &watch).await,
    ];
    // Both workers have asked for the lease by the time the info was asked for twice.
    eventually(Duration::from_secs(10), "two getWebhookInfo calls", || async {
        (asked() >= before + 2).then_some(())
    })
    .await;
    let mut exported = Vec::new();
    for worker in &workers {
        let text = reqwest::get(worker.admin_url("/metrics")).await.unwrap().text().await.unwrap();
        if text.contains("botfleet_webhook_pending_updates{bot=\"main\"} 7") {
            exported.push(text);
        }
    }
    assert_eq!(exported.len(), 1, "exactly one worker asks Telegram and exports its answer");
    let text = &exported[0];
    assert!(
        text.contains(&format!("botfleet_webhook_last_error{{bot=\"main\",message=\"{error}\"}} 1")),
        "{text}"
    );
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("botfleet_webhook_last_error_age_seconds{bot=\"main\"} "))
        .expect("the error's age")
        .parse()
        .unwrap();
    assert!((29.0..120.0).contains(&age), "the error happened 30 s ago: {age}");
}
