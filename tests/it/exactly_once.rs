//! Exactly-once and per-chat order under the faults a review found (invariants 1–3 and 6):
//! update ids reused by Telegram, a failed update with later ones of its chat behind it, a ban
//! racing the user cache, and a worker that lost its chat's turn.

use std::time::Duration;

use botfleet::kv::{BotKeys, FeedKeys};
use serde_json::json;

use crate::helpers::{
    MAIN_BOT, TestDb, deliver_ok, deliver_update, eventually, redis, said_to, spawn_fake, spawn_worker,
    spawn_worker_with, text_update, unique,
};

#[tokio::test]
async fn an_update_id_telegram_reuses_for_another_message_makes_a_new_post() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let first = text_update(7, 42, "the first post under update id seven");
    deliver_ok(&worker, &first).await;
    // A week of silence later, Telegram starts its update ids anew: 7 is another message now.
    let mut later = text_update(7, 42, "a new message that happens to reuse id seven");
    later["message"]["message_id"] = json!(9001);
    deliver_ok(&worker, &later).await;
    deliver_ok(&worker, &later).await; // and its redelivery is still one post
    // The first one's redelivery, this late, finds the id taken by the later message (a slot
    // remembers one update): handled again, Postgres knows its post by its message.
    deliver_ok(&worker, &first).await;
    let texts = db.owner().await.query("SELECT text FROM posts ORDER BY id", &[]).await.unwrap();
    let texts: Vec<String> = texts.iter().map(|row| row.get(0)).collect();
    assert_eq!(
        texts,
        [first["message"]["text"].as_str().unwrap(), later["message"]["text"].as_str().unwrap()]
    );
    assert_eq!(worker.metrics.update_ids_reused.with_label_values(&["main"]).get(), 2);
    let replies = said_to(&fake, 42);
    assert_eq!(replies[..2], ["Published as post #1.", "Published as post #2."], "{replies:?}");
}

#[tokio::test]
async fn a_failed_update_holds_its_chats_later_updates_until_its_redelivery() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    // The first write of a user fails once (a sequence does not roll back with the error).
    db.owner()
        .await
        .batch_execute(
            "CREATE SEQUENCE user_writes;
             CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
             BEGIN
                 IF nextval('user_writes') = 1 THEN RAISE EXCEPTION 'injected failure'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER fail_once BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION fail_once();",
        )
        .await
        .unwrap();
    let (post, text) = (text_update(1, 42, "/post"), text_update(2, 42, "the text of a guided post"));
    assert_ne!(deliver_update(&worker, &MAIN_BOT, &post).await.status(), 200, "the injected failure");
    // The chat's next update waits for /post: run first, it would make a quick post, and /post's
    // redelivery would then forget its text.
    let held = deliver_update(&worker, &MAIN_BOT, &text).await;
    assert_eq!(held.status(), 503, "held back behind the failed update");
    assert!(held.headers().contains_key("retry-after"));
    deliver_ok(&worker, &post).await;
    deliver_ok(&worker, &text).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0, "no quick post");
    let replies = said_to(&fake, 42);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies[0].starts_with("Send the text of your post"), "{replies:?}");
    assert!(replies[1].starts_with("Now send a photo"), "{replies:?}");
}

#[tokio::test]
async fn a_ban_the_user_cache_has_not_seen_still_keeps_the_post_out() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    deliver_ok(&worker, &text_update(1, 42, "a post before the ban")).await;
    // The ban commits, but the cache still says "not banned" (as when a refill that read the
    // row before the ban wrote it back after the ban's invalidation).
    db.owner().await.batch_execute("UPDATE users SET is_banned = true").await.unwrap();
    deliver_ok(&worker, &text_update(2, 42, "a post after the ban")).await;
    let statuses = db.owner().await.query("SELECT status FROM posts ORDER BY id", &[]).await.unwrap();
    let statuses: Vec<String> = statuses.iter().map(|row| row.get(0)).collect();
    assert_eq!(statuses, ["published", "rejected"]);
    assert_eq!(said_to(&fake, 42)[1], "You are banned from posting here.");
    let stream: i64 =
        redis::cmd("XLEN").arg(FeedKeys::new(&prefix).stream).query_async(&mut redis().await).await.unwrap();
    assert_eq!(stream, 1, "only the post from before the ban went out live");
}

#[tokio::test]
async fn a_post_racing_a_ban_waits_for_it_and_is_not_published() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    deliver_ok(&worker, &text_update(1, 42, "a post before the ban")).await;
    // A ban is being written (not committed) while the author's next post is stored.
    let admin = db.owner().await;
    admin.batch_execute("BEGIN; UPDATE users SET is_banned = true").await.unwrap();
    let racing = text_update(2, 42, "a post racing the ban");
    let posting = deliver_update(&worker, &MAIN_BOT, &racing);
    let ban = async {
        crate::helpers::until_an_insert_waits_for_a_lock(&db).await;
        admin.batch_execute("COMMIT").await.unwrap();
    };
    let (response, ()) = tokio::join!(posting, ban);
    assert_eq!(response.status(), 200);
    let status: String =
        db.owner().await.query_one("SELECT status FROM posts WHERE update_id = 2", &[]).await.unwrap().get(0);
    assert_eq!(status, "rejected", "the ban committed first");
}

#[tokio::test]
async fn a_worker_that_lost_its_chats_turn_stops_before_its_next_effect() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let settings = [("BOTFLEET_CHAT_LEASE_MS", "1500")];
    let worker = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    // The post's insert blocks on a lock while another worker takes the chat, as after this
    // worker stalled past its lease.
    let owner = db.owner().await;
    owner.batch_execute("BEGIN; LOCK TABLE posts IN SHARE ROW EXCLUSIVE MODE").await.unwrap();
    let update = text_update(1, 42, "stored while its worker lost the turn");
    let [lease, ..] = BotKeys::new(&prefix, MAIN_BOT.bot_id()).chat_turn("42");
    let steal = async {
        crate::helpers::until_an_insert_waits_for_a_lock(&db).await;
        let () = redis::cmd("SET")
            .arg(&lease)
            .arg("another-worker")
            .query_async(&mut redis().await)
            .await
            .unwrap();
    };
    let delivering =
        tokio::time::timeout(Duration::from_secs(10), deliver_update(&worker, &MAIN_BOT, &update));
    let (response, ()) = tokio::join!(delivering, steal);
    let response = response.expect("the worker must stop once its turn is gone, not wait on");
    assert_eq!(response.status(), 503);
    owner.batch_execute("COMMIT").await.unwrap();
    // The insert already sent lands; nothing after it does (no publish, no reply).
    eventually(Duration::from_secs(5), "the post stored", || async {
        (db.count("SELECT count(*) FROM posts").await == 1).then_some(())
    })
    .await;
    let stream = FeedKeys::new(&prefix).stream;
    let published: i64 = redis::cmd("XLEN").arg(&stream).query_async(&mut redis().await).await.unwrap();
    assert_eq!(published, 0);
    assert!(said_to(&fake, 42).is_empty());
    // Once the other worker is done with the chat, the redelivery finishes the job, once.
    let () = redis::cmd("DEL").arg(&lease).query_async(&mut redis().await).await.unwrap();
    deliver_ok(&worker, &update).await;
    let published: i64 = redis::cmd("XLEN").arg(&stream).query_async(&mut redis().await).await.unwrap();
    assert_eq!((published, db.count("SELECT count(*) FROM posts").await), (1, 1));
    assert_eq!(said_to(&fake, 42), ["Published as post #1."]);
}

#[tokio::test]
async fn a_reused_update_id_that_fails_for_good_keeps_a_dead_letter_of_its_own() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let settings = [("BOTFLEET_MAX_ATTEMPTS", "1")];
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &settings).await;
    // Postgres refuses text with a NUL character: both are dead-lettered at their first attempt.
    let first = text_update(5, 42, "the first poison \u{0} under id five");
    let mut reused = text_update(5, 42, "another poison \u{0} reusing id five");
    reused["message"]["message_id"] = json!(77);
    deliver_ok(&worker, &first).await;
    deliver_ok(&worker, &reused).await;
    let rows = db.owner().await.query("SELECT payload FROM dead_letters ORDER BY id", &[]).await.unwrap();
    let bodies: Vec<serde_json::Value> =
        rows.iter().map(|row| serde_json::from_str(row.get(0)).unwrap()).collect();
    assert_eq!(bodies, [first, reused], "each body kept whole");
}
