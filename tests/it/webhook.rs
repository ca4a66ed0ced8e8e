//! The webhook: authentication, bad input (invariant 10), a text becoming a post that is
//! durable before the answer (invariant 1) and never duplicated (invariant 2).

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    MAIN_BOT, TestDb, WORKER_ROLE, connect, deliver, deliver_update, env, eventually, spawn_api, spawn_fake,
    spawn_fake_on, spawn_worker, spawn_worker_with, text_update, unique,
};
use botfleet::store::StoreError;

#[tokio::test]
async fn wrong_or_missing_secret_is_401_and_writes_nothing() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let update = text_update(1, 42, "a perfectly good post text").to_string();

    for secret in [None, Some("wrong"), Some(""), Some("webhook_secret-"), Some("webhook_secret-12")] {
        let response = deliver(&worker, &MAIN_BOT, secret, update.clone()).await;
        assert_eq!(response.status(), 401, "secret {secret:?} must be refused");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("secret"), "{body}");
    }
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0, "a refused update wrote a post");
    assert_eq!(db.count("SELECT count(*) FROM users").await, 0, "a refused update wrote a user");
    assert!(fake.calls().is_empty(), "a refused update made Bot API calls: {:?}", fake.calls());

    let response = deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), update).await;
    assert_eq!(response.status(), 200, "the right secret must be accepted");
}

#[tokio::test]
async fn unknown_bot_is_404() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let response = reqwest::Client::new()
        .post(worker.url("/webhook/nobody"))
        .header("x-telegram-bot-api-secret-token", MAIN_BOT.secret)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn too_short_text_writes_nothing_and_replies_why() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;

    let response = deliver_update(&worker, &MAIN_BOT, &text_update(7, 42, "too short")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0);
    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "expected one reply, got {calls:?}");
    assert_eq!(calls[0].method, "sendMessage");
    assert_eq!(calls[0].params["chat_id"], json!(42));
    let reply = calls[0].params["text"].as_str().unwrap();
    assert!(
        reply.contains("at least 10 characters") && reply.contains("has 9"),
        "reply does not say why: {reply}"
    );

    let long = "ж".repeat(2001);
    deliver_update(&worker, &MAIN_BOT, &text_update(8, 42, &long)).await;
    let reply = fake.calls()[1].params["text"].as_str().unwrap().to_owned();
    assert!(reply.contains("at most 2000"), "reply does not say why: {reply}");
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0);
}

#[tokio::test]
async fn text_becomes_a_post_that_is_durable_before_the_answer_and_readable_from_the_replica() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let api = spawn_api(&db, &prefix, true).await;

    let text = "Hello, feed! <b>not bold</b> & ünïcödé";
    let response = deliver_update(&worker, &MAIN_BOT, &text_update(100, 42, text)).await;
    assert_eq!(response.status(), 200);
    // Durable on the primary at the moment of the answer.
    let stored = db
        .owner()
        .await
        .query_one("SELECT id, text, status, author_id FROM posts WHERE update_id = 100", &[])
        .await
        .expect("the post must be on the primary when the webhook answers");
    let id: i64 = stored.get(0);
    assert_eq!(stored.get::<_, String>(1), text);
    assert_eq!(stored.get::<_, String>(2), "published");
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].params["text"], json!(format!("Published as post #{id}.")));

    // On page 1 within a second (from the replica, or from the primary while the replica lags).
    let feed: Value = eventually(Duration::from_secs(1), "the post on page 1", || async {
        let feed: Value = reqwest::get(api.url("/api/feed")).await.ok()?.json().await.ok()?;
        (feed["posts"].as_array()?.len() == 1).then_some(feed)
    })
    .await;
    assert_eq!(feed["posts"][0]["id"], json!(id));
    assert_eq!(feed["posts"][0]["text"], json!(text));
    assert_eq!(feed["posts"][0]["author"]["first_name"], json!("Ada"));
    // Once the replica has replayed it, reads go there.
    let replica = connect(&db.url("postgres", true)).await;
    eventually(Duration::from_secs(5), "the replica to replay the post", || async {
        replica.query_opt("SELECT 1 FROM posts WHERE id = $1", &[&id]).await.ok()?.map(drop)
    })
    .await;
    let before = api.metrics.feed_reads.with_label_values(&["replica"]).get();
    let page: Value = reqwest::get(api.url("/api/feed?limit=5")).await.unwrap().json().await.unwrap();
    assert_eq!(page["posts"][0]["id"], json!(id));
    assert_eq!(
        api.metrics.feed_reads.with_label_values(&["replica"]).get(),
        before + 1,
        "read from the replica"
    );
    let post: Value = reqwest::get(api.url(&format!("/api/posts/{id}"))).await.unwrap().json().await.unwrap();
    assert_eq!(post["text"], json!(text));
}

#[tokio::test]
async fn redelivered_update_creates_one_post() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let update = text_update(5, 42, "the same update, twice over");
    let (a, b) = tokio::join!(
        deliver_update(&worker, &MAIN_BOT, &update),
        deliver_update(&worker, &MAIN_BOT, &update)
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &update).await.status(), 200);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1, "one update_id must make one post");
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_is_counted() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;

    // Over the body limit (64 KiB in tests) → 413.
    let huge = text_update(1, 42, &"x".repeat(70_000)).to_string();
    assert_eq!(deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), huge).await.status(), 413);

    // Authenticated but not an update → kept whole as a dead letter with the parser's reason,
    // acknowledged (a 4xx would have Telegram retry it for a day, then drop it) and counted.
    let bodies = ["not json", "[]", r#"{"message": {}}"#, "\u{0}"];
    for body in bodies {
        assert_eq!(deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), body).await.status(), 200, "{body:?}");
    }
    let invalid_utf8: Vec<u8> = vec![b'{', 0xff, 0xfe, b'}'];
    assert_eq!(deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), invalid_utf8).await.status(), 200);
    // A redelivery (our answer was lost) keeps no second copy.
    assert_eq!(deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), "not json").await.status(), 200);
    let kept: Vec<(String, String)> = db
        .owner()
        .await
        .query("SELECT payload, error FROM dead_letters ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let payloads: Vec<&str> = kept.iter().map(|(payload, _)| payload.as_str()).collect();
    assert_eq!(payloads, ["not json", "[]", r#"{"message": {}}"#, "base64:AA==", "base64:e//+fQ=="]);
    assert!(kept.iter().all(|(_, error)| !error.is_empty()), "each with the parser's reason: {kept:?}");
    assert_eq!(worker.metrics.updates_unparseable.with_label_values(&["main"]).get(), 6);
    assert_eq!(worker.metrics.dead_letters.with_label_values(&["main"]).get(), 6);

    // A kind we do not know → 200, ignored and counted.
    let unknown = json!({ "update_id": 9, "new_kind_of_update": { "x": 1 } });
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &unknown).await.status(), 200);
    assert_eq!(worker.metrics.updates_ignored.with_label_values(&["main", "unknown"]).get(), 1);

    // A user's message the parser cannot read (its message_id past 2^31) is no new kind: it is
    // kept as a dead letter with the parser's reason, not ignored.
    let mut big_id = text_update(10, 42, "a post whose message id is past 2^31");
    big_id["message"]["message_id"] = json!(1u64 << 31);
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &big_id).await.status(), 200);
    assert_eq!(worker.metrics.updates_ignored.with_label_values(&["main", "unknown"]).get(), 1);
    let error: String = db
        .owner()
        .await
        .query_one("SELECT error FROM dead_letters WHERE update_id = 10", &[])
        .await
        .unwrap()
        .get(0);
    assert!(error.starts_with("a message the parser could not read: "), "{error}");

    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0);
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn every_real_update_fixture_gets_a_clear_answer() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/updates");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 60, "expected the shared update fixtures, found {}", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let body = std::fs::read_to_string(path).unwrap();
        let status = deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), body).await.status();
        // Every fixture is a real update: acknowledged, handled or ignored, never an error.
        if status != 200 {
            failures.push(format!("{}: {status}", path.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(failures.is_empty(), "fixtures not acknowledged: {failures:#?}");
}

#[tokio::test]
async fn postgres_down_is_503_with_retry_after_and_the_redelivery_succeeds_once_back() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    // The worker's database disappears under it, as when the primary is down.
    let admin = connect(&env("BOTFLEET_TEST_PRIMARY_URL")).await;
    let set_reachable = async |reachable: bool| {
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {name} ALLOW_CONNECTIONS {reachable};
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}';",
                name = db.name
            ))
            .await
            .unwrap();
    };
    set_reachable(false).await;
    let update = text_update(3, 42, "while the database is away");
    let response = deliver_update(&worker, &MAIN_BOT, &update).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let ready = reqwest::get(worker.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "/readyz must report the database");

    set_reachable(true).await;
    assert_eq!(
        deliver_update(&worker, &MAIN_BOT, &update).await.status(),
        200,
        "the redelivery must succeed"
    );
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
    assert_eq!(fake.calls().len(), 1, "one reply, after the recovery");
}

#[tokio::test]
async fn telegram_unreachable_is_503_and_the_redelivery_posts_once_and_replies() {
    let db = TestDb::fresh().await;
    // Telegram is down: nothing listens where the worker sends its replies.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let worker = spawn_worker(&db, &unique("r"), &format!("http://{addr}"), &[MAIN_BOT]).await;
    let update = text_update(11, 42, "a post while telegram is away");
    let response = deliver_update(&worker, &MAIN_BOT, &update).await;
    assert_eq!(response.status(), 503, "a reply that could not be sent must make Telegram redeliver");
    assert!(response.headers().contains_key("retry-after"));

    let (fake, _) = spawn_fake_on(&addr.to_string(), false).await;
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &update).await.status(), 200);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1, "the redelivery must not post again");
    let replies = fake.calls();
    assert_eq!(replies.len(), 1);
    assert!(replies[0].params["text"].as_str().unwrap().starts_with("Published as post #"));
}

/// A session the server ended (a shutdown, a failover, an administrator) is Postgres being
/// unavailable, answered 503 so that Telegram redelivers; a statement that failed is not.
#[tokio::test]
async fn a_session_the_server_ended_is_unavailable_and_a_failed_statement_is_not() {
    let db = TestDb::fresh().await;
    let session = connect(&db.url(WORKER_ROLE, false)).await;
    let ended = session.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())").await.unwrap_err();
    assert_eq!(ended.code(), Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN), "{ended}");
    assert!(!ended.is_closed(), "told by its SQLSTATE alone");
    assert!(matches!(StoreError::from(ended), StoreError::Unavailable(_)));
    let failed = connect(&db.url(WORKER_ROLE, false)).await.batch_execute("SELECT 1 / 0").await.unwrap_err();
    assert!(matches!(StoreError::from(failed), StoreError::Other(_)));
}

#[tokio::test]
async fn a_reply_telegram_refuses_is_not_retried_and_marks_the_user_until_they_write_again() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    reqwest::Client::new()
        .post(format!("{telegram}/__fake/blocked"))
        .json(&json!({ "chat_id": 42 }))
        .send()
        .await
        .unwrap();
    let response = deliver_update(&worker, &MAIN_BOT, &text_update(12, 42, "posted, then blocked")).await;
    assert_eq!(response.status(), 200, "a refusal cannot succeed later: acknowledge");
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "a refusal for good is not tried again: {calls:?}");
    assert_eq!(calls[0].status, 403);
    assert_eq!(worker.metrics.bot_api_calls.with_label_values(&["sendMessage", "refused"]).get(), 1);
    let unreachable = "SELECT count(*) FROM users WHERE user_id = 42 AND unreachable_at IS NOT NULL";
    assert_eq!(db.count(unreachable).await, 1, "the user is marked unreachable");

    fake.set_blocked(42, false);
    let response = deliver_update(&worker, &MAIN_BOT, &text_update(13, 42, "/help")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(fake.calls().last().unwrap().status, 200);
    assert_eq!(db.count(unreachable).await, 0, "writing again makes the user reachable");
}

#[tokio::test]
async fn redis_down_is_503_with_retry_after_and_writes_nothing() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let extra = [("BOTFLEET_REDIS_URL", redis_url.as_str())];
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &extra).await;
    let response = deliver_update(&worker, &MAIN_BOT, &text_update(4, 42, "while redis is away")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0);
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn concurrent_posts_share_commits_each_update_gets_its_own_and_one_bad_post_fails_alone() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let owner = db.owner().await;
    // A post the database refuses, to prove that it cannot take the others of its batch down.
    owner
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.text LIKE '%poison%' THEN RAISE EXCEPTION 'poisoned post'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON posts FOR EACH ROW EXECUTE FUNCTION refuse_poison();
             BEGIN;
             LOCK TABLE posts IN SHARE ROW EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    // With the table locked, the worker's writer blocks on its first insert and every other
    // post queues behind it: once unlocked, they go in shared commits.
    let chats: Vec<i64> = (1..=40).collect();
    let updates = chats.iter().map(|&chat| {
        let text = if chat == 13 { "a poison post".to_owned() } else { format!("post number {chat} of many") };
        let worker = &worker;
        async move { deliver_update(worker, &MAIN_BOT, &text_update(1000 + chat, chat, &text)).await.status() }
    });
    let unlock = async {
        crate::helpers::until_an_insert_waits_for_a_lock(&db).await;
        owner.batch_execute("COMMIT").await.unwrap();
    };
    let (statuses, ()) = tokio::join!(futures_util::future::join_all(updates), unlock);

    for (&chat, status) in chats.iter().zip(&statuses) {
        let expected = if chat == 13 { 500 } else { 200 };
        assert_eq!(status.as_u16(), expected, "chat {chat}");
    }
    let calls = fake.calls();
    for &chat in chats.iter().filter(|&&chat| chat != 13) {
        let row = owner
            .query_one("SELECT id, chat_id, text FROM posts WHERE update_id = $1", &[&(1000 + chat)])
            .await
            .unwrap();
        let (id, text): (i64, String) = (row.get(0), row.get(2));
        assert_eq!((row.get::<_, i64>(1), text), (chat, format!("post number {chat} of many")));
        let replies: Vec<_> = calls.iter().filter(|c| c.params["chat_id"] == json!(chat)).collect();
        assert_eq!(replies.len(), 1, "chat {chat}: {replies:?}");
        assert_eq!(replies[0].params["text"], json!(format!("Published as post #{id}.")), "chat {chat}");
    }
    assert_eq!(db.count("SELECT count(*) FROM posts WHERE text LIKE '%poison%'").await, 0);
    let commits = &worker.metrics.posts_per_commit;
    assert_eq!(commits.get_sample_sum() as usize, chats.len(), "every post went to the writer once");
    assert!(
        commits.get_sample_count() < 40,
        "no commit was shared: {} for 40 posts",
        commits.get_sample_count()
    );
}

#[tokio::test]
async fn an_overloaded_worker_answers_503_at_once_and_the_redelivery_succeeds() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    // Replies take long, so the two updates the worker may handle at once stay in progress.
    fake.set_delay(Some(("sendMessage", Duration::from_secs(2))));
    let extra = [("BOTFLEET_MAX_IN_FLIGHT", "2")];
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &extra).await;
    let busy = [text_update(1, 1, "first of two at once"), text_update(2, 2, "second of two at once")];
    let third = text_update(3, 3, "one too many for now");
    let in_progress =
        futures_util::future::join_all(busy.iter().map(|u| deliver_update(&worker, &MAIN_BOT, u)));
    let overloaded = async {
        fake.held(2).await;
        let response = deliver_update(&worker, &MAIN_BOT, &third).await;
        (response.status().as_u16(), response.headers().get("retry-after").cloned())
    };
    let (statuses, (status, retry_after)) = tokio::join!(in_progress, overloaded);
    assert!(statuses.iter().all(|r| r.status() == 200), "the two in progress finish");
    assert_eq!(status, 503, "the third is refused at once, not kept waiting");
    assert!(retry_after.is_some(), "with Retry-After");
    assert_eq!(db.count("SELECT count(*) FROM posts WHERE update_id = 3").await, 0);
    fake.set_delay(None);
    assert_eq!(
        deliver_update(&worker, &MAIN_BOT, &third).await.status(),
        200,
        "Telegram's redelivery succeeds"
    );
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 3);
}
