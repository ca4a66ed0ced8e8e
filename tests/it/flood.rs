//! Telegram's send limits, kept by all workers together (invariant 8).

use botfleet::fake_telegram::{Call, Failure, Fake};
use serde_json::Value;

use crate::helpers::{
    MAIN_BOT, Running, TestDb, callback_update, deliver_update, eventually, spawn_fake, spawn_worker_with,
    text_update, unique,
};

/// A little under Telegram's limits (the fake enforces 30 a second per bot, 1 a second per
/// chat): on a machine as loaded as the test run's, a message can leave a worker late by more
/// than the production margin, and then arrive too close to the next one.
const LIMITS: [(&str, &str); 3] = [
    ("BOTFLEET_FLOOD_PER_BOT", "25"),
    ("BOTFLEET_FLOOD_PER_CHAT", "0.8"),
    ("BOTFLEET_FLOOD_PER_GROUP", "20"),
];

async fn three_workers(db: &TestDb, telegram: &str) -> Vec<Running> {
    let prefix = unique("r");
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(spawn_worker_with(db, &prefix, telegram, &[MAIN_BOT], &LIMITS).await);
    }
    workers
}

/// Delivers every update at once, each to the next worker in turn; all must be acknowledged.
async fn deliver_all(workers: &[Running], updates: &[Value]) {
    let deliveries = updates.iter().enumerate().map(|(n, update)| async move {
        deliver_update(&workers[n % workers.len()], &MAIN_BOT, update).await.status().as_u16()
    });
    let statuses = futures_util::future::join_all(deliveries).await;
    assert!(statuses.iter().all(|s| *s == 200), "every update must be acknowledged: {statuses:?}");
}

fn messages(fake: &Fake) -> Vec<Call> {
    fake.calls().into_iter().filter(|c| c.method == "sendMessage").collect()
}

#[tokio::test]
async fn three_workers_together_stay_within_telegrams_limits() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(true).await;
    let workers = three_workers(&db, &telegram).await;
    // 75 chats at once, over three workers, and three of them twice more: beyond 30 a second
    // for the bot, and beyond one a second for those three chats.
    let mut updates: Vec<Value> = (1..=75).map(|chat| text_update(chat, chat, "/help")).collect();
    updates.extend(
        (1..=3).flat_map(|chat| {
            [text_update(100 + chat, chat, "/help"), text_update(200 + chat, chat, "/help")]
        }),
    );
    deliver_all(&workers, &updates).await;

    let sent = messages(&fake);
    let refused: Vec<&Call> = sent.iter().filter(|c| c.status != 200).collect();
    assert!(refused.is_empty(), "the fake Telegram refused messages past its limits: {refused:?}");
    assert_eq!(sent.len(), updates.len(), "one reply per update");
    let at: Vec<u64> = sent.iter().map(|c| c.at_ms).collect();
    let busiest =
        at.iter().map(|&start| at.iter().filter(|&&t| t >= start && t < start + 1000).count()).max();
    assert!(busiest <= Some(30), "{busiest:?} messages within one second");
    for chat in 1..=3 {
        let to_chat: Vec<u64> =
            sent.iter().filter(|c| c.params["chat_id"] == chat).map(|c| c.at_ms).collect();
        assert_eq!(to_chat.len(), 3);
        assert!(
            to_chat.windows(2).all(|w| w[1] >= w[0] + 1000),
            "chat {chat} got more than one a second: {to_chat:?}"
        );
    }
}

#[tokio::test]
async fn a_429_pauses_every_workers_sends_for_its_retry_after() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let workers = three_workers(&db, &telegram).await;
    fake.fail_next("sendMessage", Failure::TooManyRequests(3));
    let first = text_update(1, 1, "/help");
    // A reply, and a button's answer: no message, but a call to Telegram all the same.
    let others = [text_update(2, 2, "/help"), callback_update(3, 3, 3, "del:999")];
    let refused_then_others = async {
        let refused_at = eventually(std::time::Duration::from_secs(5), "the 429", || async {
            messages(&fake).iter().find(|c| c.status == 429).map(|c| c.at_ms)
        })
        .await;
        deliver_all(&workers[1..], &others).await;
        refused_at
    };
    let (status, refused_at) =
        tokio::join!(deliver_update(&workers[0], &MAIN_BOT, &first), refused_then_others);
    assert_eq!(status.status(), 200, "the refused reply is sent again after the pause");

    let sent: Vec<Call> = fake.calls().into_iter().filter(|c| c.status == 200).collect();
    let methods: Vec<&str> = sent.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(
        methods.iter().filter(|m| **m == "sendMessage").count(),
        2,
        "every reply went out once: {sent:?}"
    );
    assert!(methods.contains(&"answerCallbackQuery"), "{methods:?}");
    for call in &sent {
        assert!(
            call.at_ms + 5 >= refused_at + 3000,
            "a message went out {} ms after the 429 with retry_after = 3: {call:?}",
            call.at_ms - refused_at
        );
    }
}

#[tokio::test]
async fn a_telegram_5xx_is_tried_again() {
    // Slow by nature: teloxide itself waits 10 s after a 5xx before it returns the error.
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &LIMITS).await;
    fake.fail_next("sendMessage", Failure::ServerError);
    let response = deliver_update(&worker, &MAIN_BOT, &text_update(1, 1, "/help")).await;
    assert_eq!(response.status(), 200);
    let statuses: Vec<u16> = messages(&fake).iter().map(|c| c.status).collect();
    assert_eq!(statuses, [500, 200], "Telegram's 500 passes: the reply is sent again");
}
