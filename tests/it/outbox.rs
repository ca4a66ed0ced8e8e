//! The durable outbox: a message whose sender died is claimed by another and delivered; one
//! that keeps failing ends in the dead stream, counted, after a bounded number of deliveries.

use std::time::Duration;

use botfleet::kv::BotKeys;
use serde_json::json;

use crate::helpers::{MAIN_BOT, TestDb, eventually, redis, spawn_fake, spawn_worker_with, unique};

/// The outbox's stream and dead stream, its group created, and one message queued for chat 42
/// that a sender ("ghost") took and then died with.
async fn a_message_left_by_a_dead_sender(prefix: &str) -> [String; 2] {
    let [outbox, dead] = BotKeys::new(prefix, MAIN_BOT.id()).outbox();
    let mut conn = redis().await;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&outbox)
        .arg("senders")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&outbox)
        .arg("*")
        .arg("chat")
        .arg(42)
        .arg("text")
        .arg("a message its sender never sent")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("senders")
        .arg("ghost")
        .arg("STREAMS")
        .arg(&outbox)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    [outbox, dead]
}

async fn len(key: &str) -> i64 {
    redis::cmd("XLEN").arg(key).query_async(&mut redis().await).await.unwrap()
}

#[tokio::test]
async fn a_message_whose_sender_died_is_claimed_and_delivered_once() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let prefix = unique("r");
    let [outbox, _] = a_message_left_by_a_dead_sender(&prefix).await;
    let claim = [("BOTFLEET_OUTBOX_CLAIM_MS", "300")];
    let _worker = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &claim).await;
    let sent = eventually(Duration::from_secs(10), "the message delivered", || async {
        let calls = fake.calls();
        calls.iter().any(|c| c.params["text"] == "a message its sender never sent").then_some(calls)
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].params["chat_id"], json!(42));
    eventually(Duration::from_secs(5), "the delivered message gone from the outbox", || async {
        (len(&outbox).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_after_bounded_deliveries() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let [outbox, dead] = a_message_left_by_a_dead_sender(&prefix).await;
    // Telegram unreachable: a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let telegram = format!("http://127.0.0.1:{port}");
    let settings = [("BOTFLEET_OUTBOX_CLAIM_MS", "100"), ("BOTFLEET_OUTBOX_MAX_DELIVERIES", "3")];
    let worker = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    eventually(Duration::from_secs(20), "the message in the dead stream", || async {
        (len(&dead).await == 1).then_some(())
    })
    .await;
    assert_eq!(len(&outbox).await, 0, "nothing is retried forever");
    assert_eq!(worker.metrics.outbox_dead.with_label_values(&["main"]).get(), 1);
    let entry: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(&dead).arg("-").arg("+").query_async(&mut redis().await).await.unwrap();
    assert!(entry[0].1.contains(&"a message its sender never sent".to_owned()), "kept whole: {entry:?}");
}
