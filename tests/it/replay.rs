//! Recording and replaying traffic (workload W4): a worker records what it receives, anonymised,
//! with each chat's sequence whole; the capture replayed at 5× into another cluster, the way
//! Telegram delivers, passes the exactly-once audit; the fake Telegram delivers the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use botfleet::replay::audit::audit;
use botfleet::replay::{Arrival, Recorded, Webhook, deliver_all, read_capture};
use serde_json::{Value, json};

use crate::helpers::{
    MAIN_BOT, TestDb, callback_update, deliver_update, photo_update, spawn_fake, spawn_worker,
    spawn_worker_with, text_update, unique,
};

/// A conversation of three users: posts, commands, a photo, a whole /post dialogue.
fn conversation() -> Vec<Value> {
    let named = |mut update: Value, name: &str| {
        for part in ["from", "chat"] {
            update["message"][part]["first_name"] = json!(name);
            update["message"][part]["username"] = json!(format!("{}_handle", name.to_lowercase()));
        }
        update
    };
    vec![
        named(text_update(1, 910_001, "Ada's first post about engines"), "Ada"),
        named(text_update(2, 910_002, "/start from-a-friend"), "Grace"),
        named(text_update(3, 910_001, "/post"), "Ada"),
        named(text_update(4, 910_003, "Edsger considers goto harmful"), "Edsger"),
        named(text_update(5, 910_001, "A dialogue post about the analytical engine"), "Ada"),
        named(photo_update(6, 910_002, "Grace's photo of a moth"), "Grace"),
        named(text_update(7, 910_001, "/skip"), "Ada"),
        callback_update(8, 910_001, 910_001, "post:publish"),
        named(text_update(9, 910_003, "/my"), "Edsger"),
    ]
}

/// Each chat's update ids in order, the chats in no particular order.
fn sequences<'a>(updates: impl Iterator<Item = &'a Value>) -> Vec<Vec<i64>> {
    let mut chats: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for update in updates {
        let recorded = Recorded { at_ms: 0, bot: None, update: update.clone() };
        chats.entry(recorded.chat().unwrap()).or_default().push(recorded.update_id().unwrap());
    }
    let mut sequences: Vec<Vec<i64>> = chats.into_values().collect();
    sequences.sort();
    sequences
}

#[tokio::test]
async fn a_recorded_capture_is_anonymised_and_replays_at_five_times_speed_exactly_once() {
    // Recording, on the first cluster.
    let capture = std::env::temp_dir().join(unique("capture")).with_extension("jsonl");
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let path = capture.to_string_lossy().into_owned();
    let worker = spawn_worker_with(
        &db,
        &unique("r"),
        &telegram,
        &[MAIN_BOT],
        &[("BOTFLEET_RECORD_PATH", path.as_str())],
    )
    .await;
    let originals = conversation();
    for update in &originals {
        assert_eq!(deliver_update(&worker, &MAIN_BOT, update).await.status(), 200, "{update}");
    }
    let text = std::fs::read_to_string(&capture).unwrap();
    std::fs::remove_file(&capture).ok();
    for original in ["910001", "910002", "Ada", "Grace", "grace_handle", "engines", "moth", "goto"] {
        assert!(!text.contains(original), "the capture still holds {original:?}");
    }
    let recorded = read_capture(&text).unwrap();
    assert_eq!(recorded.len(), originals.len());
    assert!(recorded.iter().all(|r| r.bot.as_deref() == Some("main")));
    assert_eq!(
        sequences(recorded.iter().map(|r| &r.update)),
        sequences(originals.iter()),
        "every chat keeps its sequence of updates"
    );
    assert_eq!(recorded[2].update["message"]["text"], "/post", "commands are kept");

    // Replaying it at 5× into a second cluster, as Telegram would deliver it.
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let webhook = Webhook {
        url: worker.url("/webhook/main"),
        secret: MAIN_BOT.secret.to_owned(),
        max_connections: 40,
        timeout: std::time::Duration::from_secs(60),
        give_up_after: std::time::Duration::from_secs(30),
    };
    let client = reqwest::Client::new();
    let delivered =
        deliver_all(&client, &webhook, recorded.clone(), &Arrival::Capture { speed: 5.0 }, Arc::default())
            .await;
    assert!(delivered.iter().all(|d| d.acknowledged && d.attempts == 1), "{delivered:?}");
    let acknowledged: Vec<(&Value, bool)> = recorded.iter().map(|r| (&r.update, true)).collect();
    let calls: Vec<Value> = fake.calls().iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    let rows = db
        .owner()
        .await
        .query("SELECT update_id, count(*) FROM posts GROUP BY update_id", &[])
        .await
        .unwrap();
    let posts: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let result = audit(&acknowledged, &calls, (&posts, &Default::default()));
    assert!(result.passed(), "{result:?}");
    assert_eq!(result.audited, 9, "every message and the callback had its one effect: {result:?}");
    assert_eq!(result.posts, 4, "three posts and the dialogue's: {posts:?}");

    // The same capture again: every update is a duplicate, acknowledged with no second effect.
    let again = deliver_all(&client, &webhook, recorded.clone(), &Arrival::Closed, Arc::default()).await;
    assert!(again.iter().all(|d| d.acknowledged));
    let calls: Vec<Value> = fake.calls().iter().map(|c| serde_json::to_value(c).unwrap()).collect();
    assert!(
        audit(&acknowledged, &calls, (&posts, &Default::default())).passed(),
        "a redelivered capture changes nothing"
    );
}

#[tokio::test]
async fn the_fake_telegram_delivers_a_capture_to_the_registered_webhook() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let client = reqwest::Client::new();
    let set = format!("{telegram}/bot{}/setWebhook", MAIN_BOT.token);
    let registered = client
        .post(&set)
        .json(&json!({"url": worker.url("/webhook/main"), "secret_token": MAIN_BOT.secret, "max_connections": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 200);
    let capture: String = (1..=20)
        .map(|n| json!({"at_ms": n * 10, "update": text_update(n, 920_000 + n % 4, &format!("delivered post {n}"))}))
        .map(|line| format!("{line}\n"))
        .collect();
    let url = format!("{telegram}/__fake/deliver?bot_id={}&speed=4", MAIN_BOT.id());
    let summary: Value = client.post(&url).body(capture).send().await.unwrap().json().await.unwrap();
    assert_eq!(summary, json!({"delivered": 20, "acknowledged": 20, "attempts": 20}));
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 20);
    assert!(fake.calls().len() >= 20, "each post got its reply");
    // Bad input: not a capture, and a bot without a webhook.
    let bad = client.post(&url).body("not json\n").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("line 1"));
    let nobody = client.post(format!("{telegram}/__fake/deliver?bot_id=1")).body("").send().await.unwrap();
    assert_eq!(nobody.status(), 409);
}
