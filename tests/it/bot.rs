//! The whole bot with several workers: exactly-once (invariant 2), per-chat order (3),
//! dialogues in Redis (4), the user cache and bans (5), moderation, dead letters (10).

use std::time::Duration;

use botfleet::fake_telegram::{Failure, Fake};
use botfleet::kv::{BotKeys, FeedKeys};
use botfleet::types::{ChatId, UserId};
use serde_json::{Value, json};

use crate::helpers::redis;
use crate::helpers::{
    MAIN_BOT, TestBot, TestDb, callback_update, deliver_ok, deliver_update, eventually, outbox_drained,
    photo_update, said_to, spawn_fake, spawn_worker, spawn_worker_with, text_update, unique,
};

#[tokio::test]
async fn the_same_update_to_two_workers_at_once_makes_one_post_and_one_reply() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let a = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let b = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let update = text_update(77, 42, "delivered twice, at the same moment");
    let (ra, rb) =
        tokio::join!(deliver_update(&a, &MAIN_BOT, &update), deliver_update(&b, &MAIN_BOT, &update));
    assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
    assert_eq!(said_to(&fake, 42).len(), 1, "one update, one reply: {:?}", said_to(&fake, 42));
    let hits = a.metrics.dedup_hits.with_label_values(&["main"]).get()
        + b.metrics.dedup_hits.with_label_values(&["main"]).get();
    assert_eq!(hits, 1, "the second delivery must be recognised as handled");
    let stream: i64 =
        redis::cmd("XLEN").arg(FeedKeys::new(&prefix).stream).query_async(&mut redis().await).await.unwrap();
    assert_eq!(stream, 1, "one post, published once");
}

#[tokio::test]
async fn two_hundred_updates_of_one_chat_across_three_workers_drain_one_at_a_time_in_update_id_order() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let settings = [("BOTFLEET_MAX_WAIT_MS", "60000")];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await);
    }
    // Hold the chat's turn, as a worker handling an earlier update would.
    let mut conn = redis().await;
    let [lease, queue, ..] = BotKeys::new(&prefix, MAIN_BOT.bot_id()).chat_turn("42");
    let () = redis::cmd("SET").arg(&lease).arg("held-by-the-test").query_async(&mut conn).await.unwrap();

    let ids: Vec<i64> = (1000..1200).collect();
    let mut deliveries = Vec::new();
    for (n, &id) in ids.iter().enumerate().rev() {
        let update = text_update(id, 42, &format!("ordered post number {id}"));
        let worker = &workers[n % 3];
        deliveries.push(async move { deliver_update(worker, &MAIN_BOT, &update).await.status().as_u16() });
    }
    let all = futures_util::future::join_all(deliveries);
    let waiting = async {
        eventually(Duration::from_secs(20), "all 200 updates queued for the chat's turn", || {
            let queue = queue.clone();
            async move {
                let queued: i64 =
                    redis::cmd("ZCARD").arg(&queue).query_async(&mut redis().await).await.ok()?;
                (queued == 200).then_some(())
            }
        })
        .await;
        let () = redis::cmd("DEL").arg(&lease).query_async(&mut redis().await).await.unwrap();
    };
    let (statuses, ()) = tokio::join!(all, waiting);
    assert!(statuses.iter().all(|s| *s == 200), "every update must be acknowledged: {statuses:?}");

    let rows = db.owner().await.query("SELECT update_id FROM posts ORDER BY id", &[]).await.unwrap();
    let handled: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(handled, ids, "posts must be created one at a time in update_id order");
    let replies: Vec<String> = said_to(&fake, 42);
    assert_eq!(replies.len(), 200);
}

#[tokio::test]
async fn a_slow_update_keeps_its_chats_turn_past_the_lease_length() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    // Each reply takes five lease lengths: only renewing the lease keeps the turn that long.
    let (lease_ms, reply_ms) = (200, 1000);
    fake.set_delay(Some(("sendMessage", Duration::from_millis(reply_ms))));
    let settings = [("BOTFLEET_CHAT_LEASE_MS", "200"), ("BOTFLEET_MAX_WAIT_MS", "10000")];
    let a = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    let b = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;

    let (one, two) =
        (text_update(1, 42, "the first, slow to answer"), text_update(2, 42, "the second, sent meanwhile"));
    let first = deliver_update(&a, &MAIN_BOT, &one);
    let second = async {
        fake.held(1).await;
        deliver_update(&b, &MAIN_BOT, &two).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let at: Vec<u64> = fake.calls().iter().filter(|c| c.method == "sendMessage").map(|c| c.at_ms).collect();
    assert_eq!(at.len(), 2);
    // The second update may only begin once the first has ended, so its reply comes a whole
    // reply later; had its lease lapsed, it would have come one lease length later.
    assert!(
        at[1] - at[0] >= reply_ms,
        "the second update ran while the first held the chat ({} ms apart; lease {lease_ms} ms)",
        at[1] - at[0]
    );
}

#[tokio::test]
async fn post_dialogue_moves_between_workers_and_survives_a_restart() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let a = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let b = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;

    deliver_ok(&a, &text_update(1, 42, "/post")).await;
    deliver_ok(&b, &text_update(2, 42, "short")).await;
    deliver_ok(&b, &text_update(3, 42, "the text of a guided post")).await;
    // Worker a goes away; a new one takes over mid-dialogue.
    a.stop.cancel();
    a.handle.await.unwrap().unwrap();
    let c = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    deliver_ok(&c, &photo_update(4, 42, "")).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0, "nothing is posted before the confirmation");
    deliver_ok(&b, &callback_update(5, 42, 42, "post:publish")).await;
    outbox_drained(&prefix).await;

    let post = db
        .owner()
        .await
        .query_one("SELECT text, media_file_id, status FROM posts", &[])
        .await
        .expect("the confirmed dialogue must create one post");
    assert_eq!(post.get::<_, String>(0), "the text of a guided post");
    assert_eq!(post.get::<_, Option<String>>(1).as_deref(), Some("photo-4"));
    assert_eq!(post.get::<_, String>(2), "published");
    let replies = said_to(&fake, 42);
    assert!(replies[1].contains("is too short"), "{replies:?}");
    assert!(replies[2].contains("photo"), "{replies:?}");
    assert!(replies[3].starts_with("Your post (with your photo)"), "{replies:?}");
    assert!(replies[4].starts_with("Published as post #"), "{replies:?}");
    // The dialogue ended: a confirmation pressed again does nothing.
    deliver_ok(&c, &callback_update(6, 42, 42, "post:publish")).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
    assert_eq!(dialogue_step(&prefix, 42).await, "");
}

/// The chat's dialogue state as stored ("" once it ended).
async fn dialogue_step(prefix: &str, chat: i64) -> String {
    let state: Option<String> = redis::cmd("HGET")
        .arg(BotKeys::new(prefix, MAIN_BOT.bot_id()).dialogue(ChatId(chat)))
        .arg("s")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    state.unwrap_or_default()
}

/// The texts of the successful calls of `method`, in order.
fn texts_of(fake: &Fake, method: &str) -> Vec<String> {
    fake.calls()
        .into_iter()
        .filter(|c| c.method == method && c.status == 200)
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The successful replies that quote `message` (each message gets one: see `Ctx::quote`).
fn replies_to(fake: &Fake, message: i64) -> Vec<String> {
    fake.calls()
        .into_iter()
        .filter(|c| c.status == 200 && c.params["reply_parameters"]["message_id"] == json!(message))
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A Redis user of its own for one worker, so that a test can take a command away from that
/// worker alone (the test Redis is shared).
struct RedisUser {
    name: String,
    url: String,
}

impl RedisUser {
    async fn new() -> Self {
        let name = unique("user");
        let () = redis::cmd("ACL")
            .arg(&["SETUSER", &name, "on", ">secret", "~*", "&*", "+@all"])
            .query_async(&mut redis().await)
            .await
            .unwrap();
        let url = crate::helpers::with(
            &crate::helpers::env("BOTFLEET_TEST_REDIS_URL"),
            Some((&name, "secret")),
            None,
        );
        RedisUser { name, url }
    }

    /// Allows (`+hset`) or forbids (`-hset`) a command, at once on open connections too.
    async fn set(&self, rule: &str) {
        let () = redis::cmd("ACL")
            .arg(&["SETUSER", &self.name, rule])
            .query_async(&mut redis().await)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_dialogue_step_replies_once_whether_its_save_or_its_reply_fails() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let user = RedisUser::new().await;
    let redis_url = [(botfleet::settings::REDIS_URL, user.url.as_str())];
    let worker = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &redis_url).await;
    deliver_ok(&worker, &text_update(1, 42, "/post")).await;

    // The step cannot be saved (the save's HSET is refused, as when Redis goes away after the
    // turn began): Telegram is asked to redeliver, and nothing was said yet.
    let text = text_update(2, 42, "the text of a guided post");
    user.set("-hset").await;
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &text).await.status(), 503);
    assert_eq!(replies_to(&fake, 2), Vec::<String>::new(), "a reply before the step was saved");
    user.set("+hset").await;
    deliver_ok(&worker, &text).await;
    assert_eq!(replies_to(&fake, 2), ["Now send a photo for your post, or /skip."]);

    // The step is saved but its reply fails (every attempt the worker makes): the redelivery
    // answers from where the step began.
    let photo = photo_update(3, 42, "");
    fake.fail_times("sendMessage", Failure::TooManyRequests(1), 3);
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &photo).await.status(), 503);
    assert!(dialogue_step(&prefix, 42).await.contains("confirm"), "the step was saved");
    deliver_ok(&worker, &photo).await;
    let preview = replies_to(&fake, 3);
    assert_eq!(preview.len(), 1, "{preview:?}");
    assert!(preview[0].starts_with("Your post (with your photo)"), "{preview:?}");

    // Publish is pressed; the dialogue ends, but answering the query fails. Its redelivery
    // answers the same and tells the author nothing twice.
    let publish = callback_update(4, 42, 42, "post:publish");
    fake.fail_next("answerCallbackQuery", Failure::TooManyRequests(1));
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &publish).await.status(), 503);
    assert_eq!(dialogue_step(&prefix, 42).await, "", "the dialogue ended");
    deliver_ok(&worker, &publish).await;
    outbox_drained(&prefix).await;
    assert_eq!(texts_of(&fake, "answerCallbackQuery"), ["Done."]);
    let published: Vec<_> =
        said_to(&fake, 42).into_iter().filter(|text| text.starts_with("Published as post #")).collect();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
}

#[tokio::test]
async fn an_abandoned_dialogue_expires_and_cancel_ends_one() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let worker =
        spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &[("BOTFLEET_DIALOGUE_TTL_SECS", "600")])
            .await;
    deliver_ok(&worker, &text_update(1, 42, "/post")).await;
    let key = BotKeys::new(&prefix, MAIN_BOT.bot_id()).dialogue(ChatId(42));
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis().await).await.unwrap();
    assert!(ttl > 590_000 && ttl <= 600_000, "the dialogue must expire after the configured TTL, PTTL {ttl}");
    deliver_ok(&worker, &text_update(2, 42, "/cancel")).await;
    assert_eq!(said_to(&fake, 42).last().unwrap(), "Cancelled.");
    assert_eq!(dialogue_step(&prefix, 42).await, "");
    // Back to quick posts.
    deliver_ok(&worker, &text_update(3, 42, "a quick post after cancelling")).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
}

const ADMIN: i64 = 1;

#[tokio::test]
async fn a_ban_takes_effect_on_the_next_update_on_every_worker() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let admins = [("BOTFLEET_BOT_MAIN_ADMINS", "1")];
    let a = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &admins).await;
    let b = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &admins).await;
    deliver_ok(&b, &text_update(1, 42, "a post before the ban")).await;
    // User 42 is now cached on b's side of the cluster; the admin bans through a.
    deliver_ok(&a, &text_update(2, 43, "/ban 42")).await;
    assert!(said_to(&fake, 43).last().unwrap().contains("Only the bot's admins"), "a non-admin cannot ban");
    deliver_ok(&a, &text_update(3, ADMIN, "/ban 42")).await;
    assert!(said_to(&fake, ADMIN).last().unwrap().contains("42 banned"), "{:?}", said_to(&fake, ADMIN));
    deliver_ok(&b, &text_update(4, 42, "a post after the ban")).await;
    assert_eq!(said_to(&fake, 42).last().unwrap(), "You are banned from posting here.");
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1, "a banned user's post must not be stored");
    let generation: i64 = redis::cmd("GET")
        .arg(FeedKeys::new(&prefix).generation)
        .query_async(&mut redis().await)
        .await
        .unwrap();
    assert!(generation >= 2, "the ban must invalidate cached feed pages");

    deliver_ok(&b, &text_update(5, ADMIN, "/unban 42")).await;
    deliver_ok(&a, &text_update(6, 42, "a post after the unban")).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 2);
}

#[tokio::test]
async fn two_moderators_approving_at_once_publish_once_and_notify_once() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let settings = [("BOTFLEET_BOT_MAIN_MODERATOR_CHAT", "-100200")];
    let a = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    let b = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    deliver_ok(&a, &text_update(1, 42, "please approve this post")).await;
    outbox_drained(&prefix).await;
    let pending: i64 = db.count("SELECT id FROM posts WHERE status = 'pending'").await;
    assert!(said_to(&fake, 42)[0].contains("waiting for a moderator"));
    let to_moderators = said_to(&fake, -100200);
    assert!(to_moderators[0].contains("please approve this post"), "{to_moderators:?}");
    // An edit while pending updates the post.
    let mut edit = text_update(2, 42, "please approve this edited post");
    edit["edited_message"] = edit["message"].take();
    edit.as_object_mut().unwrap().remove("message");
    edit["edited_message"]["message_id"] = json!(1);
    edit["edited_message"]["edit_date"] = json!(1_790_000_100);
    deliver_ok(&b, &edit).await;
    assert_eq!(
        db.count("SELECT count(*) FROM posts WHERE text = 'please approve this edited post'").await,
        1
    );

    let data = format!("mod:ok:{pending}");
    let first = callback_update(3, 7, -100200, &data);
    let second = callback_update(4, 8, -100200, &data);
    let (ra, rb) =
        tokio::join!(deliver_update(&a, &MAIN_BOT, &first), deliver_update(&b, &MAIN_BOT, &second));
    assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
    assert_eq!(db.count("SELECT count(*) FROM posts WHERE status = 'published'").await, 1);
    outbox_drained(&prefix).await;
    let notices: Vec<String> =
        said_to(&fake, 42).into_iter().filter(|t| t.contains("was published")).collect();
    assert_eq!(notices.len(), 1, "the author must be told once: {notices:?}");
    let stream: i64 =
        redis::cmd("XLEN").arg(FeedKeys::new(&prefix).stream).query_async(&mut redis().await).await.unwrap();
    assert_eq!(stream, 1, "one publish");
    let answers = texts_of(&fake, "answerCallbackQuery");
    assert!(answers.contains(&"Already decided.".to_owned()), "{answers:?}");
    // The edit came too late to count now.
    let mut late = edit.clone();
    late["update_id"] = json!(5);
    late["edited_message"]["text"] = json!("an edit after publishing");
    deliver_ok(&a, &late).await;
    assert_eq!(db.count("SELECT count(*) FROM posts WHERE text = 'an edit after publishing'").await, 0);
    // Pressing a moderator button outside the moderator chat does nothing.
    deliver_ok(&a, &callback_update(6, 42, 42, &format!("mod:no:{pending}"))).await;
    assert_eq!(db.count("SELECT count(*) FROM posts WHERE status = 'published'").await, 1);
}

#[tokio::test]
async fn a_moderators_click_whose_edit_failed_finishes_on_redelivery() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let settings = [("BOTFLEET_BOT_MAIN_MODERATOR_CHAT", "-100200")];
    let worker = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    deliver_ok(&worker, &text_update(1, 42, "please approve this post")).await;
    let pending: i64 = db.count("SELECT id FROM posts WHERE status = 'pending'").await;

    // The post is published, but the moderator chat's message cannot be edited (every attempt
    // the worker makes is refused with a 429): Telegram is asked to redeliver the click.
    let click = callback_update(2, 7, -100200, &format!("mod:ok:{pending}"));
    fake.fail_times("editMessageText", Failure::TooManyRequests(1), 3);
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &click).await.status(), 503);
    assert_eq!(db.count("SELECT count(*) FROM posts WHERE status = 'published'").await, 1);
    // Its redelivery knows the decision as its own: it edits the message and says so.
    deliver_ok(&worker, &click).await;
    let edits = texts_of(&fake, "editMessageText");
    assert_eq!(edits.len(), 1, "{edits:?}");
    assert!(edits[0].starts_with(&format!("Post #{pending}: approved by")), "{edits:?}");
    assert_eq!(texts_of(&fake, "answerCallbackQuery"), [format!("Post #{pending} approved.")]);
    // Another moderator's later click is told it was decided, and edits nothing.
    deliver_ok(&worker, &callback_update(3, 8, -100200, &format!("mod:no:{pending}"))).await;
    assert_eq!(texts_of(&fake, "editMessageText").len(), 1);
    assert_eq!(fake.calls().last().unwrap().params["text"], json!("Already decided."));
}

#[tokio::test]
async fn my_lists_the_authors_posts_and_deletes_one() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    deliver_ok(&worker, &text_update(1, 42, "the first post of mine")).await;
    deliver_ok(&worker, &text_update(2, 43, "somebody else's post")).await;
    deliver_ok(&worker, &text_update(3, 42, "/my")).await;
    let list = fake.calls().into_iter().rfind(|c| c.params["chat_id"] == json!(42)).unwrap();
    assert!(list.params["text"].as_str().unwrap().contains("the first post of mine"));
    let own: i64 = db.count("SELECT id FROM posts WHERE author_id = 42").await;
    let theirs: i64 = db.count("SELECT id FROM posts WHERE author_id = 43").await;
    assert_eq!(
        list.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"],
        json!(format!("del:{own}"))
    );
    deliver_ok(&worker, &callback_update(4, 42, 42, &format!("del:{theirs}"))).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 2, "nobody deletes another's post");
    deliver_ok(&worker, &callback_update(5, 42, 42, &format!("del:{own}"))).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
    assert_eq!(said_to(&fake, 42).last().unwrap(), &format!("Post #{own} deleted."));
}

#[tokio::test]
async fn a_delete_whose_feed_invalidation_failed_invalidates_on_redelivery() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (_fake, telegram) = spawn_fake(false).await;
    let user = RedisUser::new().await;
    let worker = spawn_worker_with(
        &db,
        &prefix,
        &telegram,
        &[MAIN_BOT],
        &[(botfleet::settings::REDIS_URL, &user.url)],
    )
    .await;
    deliver_ok(&worker, &text_update(1, 42, "a post its author regrets")).await;
    let id: i64 = db.count("SELECT id FROM posts").await;
    let generation = FeedKeys::new(&prefix).generation;
    let pages = || async {
        let generation: Option<i64> =
            redis::cmd("GET").arg(&generation).query_async(&mut redis().await).await.unwrap();
        generation
    };
    let before = pages().await;

    // The row goes, but the feed's pages cannot be invalidated (TIME, which moving the versions
    // on asks, refused: as when Redis fails right after the commit): Telegram is asked to
    // redeliver.
    let delete = callback_update(2, 42, 42, &format!("del:{id}"));
    user.set("-time").await;
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &delete).await.status(), 503);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0);
    assert_eq!(pages().await, before, "nothing invalidated yet");
    // The redelivery finds nothing to delete, and invalidates the pages all the same.
    user.set("+time").await;
    deliver_ok(&worker, &delete).await;
    assert!(pages().await > before, "the deleted post is still on cached pages");
}

#[tokio::test]
async fn user_cache_hits_refreshes_on_change_and_upserts_only_changes() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let cache = |result: &str| worker.metrics.user_cache.with_label_values(&[result]).get();
    deliver_ok(&worker, &text_update(1, 42, "/help")).await;
    deliver_ok(&worker, &text_update(2, 42, "/help")).await;
    assert_eq!((cache("miss"), cache("hit")), (1, 1));
    let updated_at = "SELECT extract(epoch from updated_at)::float8 FROM users WHERE user_id = 42";
    let before: f64 = db.owner().await.query_one(updated_at, &[]).await.unwrap().get(0);
    let key = BotKeys::new(&prefix, MAIN_BOT.bot_id()).user(UserId(42));
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis().await).await.unwrap();
    assert!(ttl > 290 && ttl <= 300, "five-minute TTL, got {ttl}");
    // The user renames themselves: the row and the cache follow at once.
    let mut renamed = text_update(3, 42, "/help");
    renamed["message"]["from"]["first_name"] = json!("Ada Lovelace");
    deliver_ok(&worker, &renamed).await;
    assert_eq!(cache("miss"), 2);
    let name: String = db.owner().await.query_one("SELECT first_name FROM users", &[]).await.unwrap().get(0);
    assert_eq!(name, "Ada Lovelace");
    let after_rename: f64 = db.owner().await.query_one(updated_at, &[]).await.unwrap().get(0);
    assert!(after_rename > before, "the rename must have rewritten the row");
    // Dropping the cache entry reloads without rewriting an unchanged row.
    let () = redis::cmd("DEL").arg(&key).query_async(&mut redis().await).await.unwrap();
    let mut same = renamed.clone();
    same["update_id"] = json!(4);
    deliver_ok(&worker, &same).await;
    assert_eq!(cache("miss"), 3);
    let after_reload: f64 = db.owner().await.query_one(updated_at, &[]).await.unwrap().get(0);
    assert_eq!(after_reload, after_rename, "an unchanged profile must not be written again");
}

#[tokio::test]
async fn an_update_that_always_fails_is_dead_lettered_then_acknowledged() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker =
        spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &[("BOTFLEET_MAX_ATTEMPTS", "3")]).await;
    // Postgres refuses text with a NUL character: this update can never be stored.
    let poison = text_update(66, 42, "a post with a \u{0} inside it");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(deliver_update(&worker, &MAIN_BOT, &poison).await.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 200, 200], "two failures, then dead-lettered and acknowledged for good");
    let row = db
        .owner()
        .await
        .query_one("SELECT update_id, attempts, error, payload FROM dead_letters", &[])
        .await
        .expect("the update must be in the dead-letter table");
    assert_eq!(row.get::<_, Option<i64>>(0), Some(66));
    assert_eq!(row.get::<_, i32>(1), 3);
    assert!(row.get::<_, String>(2).contains("0x00"), "the last error is kept: {}", row.get::<_, String>(2));
    let payload: Value = serde_json::from_str(&row.get::<_, String>(3)).unwrap();
    assert_eq!(payload, poison, "the whole update is kept");
    assert_eq!(worker.metrics.dead_letters.with_label_values(&["main"]).get(), 1);
    assert!(said_to(&fake, 42).is_empty());
}

#[tokio::test]
async fn a_panicking_update_releases_its_chat_counts_as_an_attempt_and_is_dead_lettered() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    // A lease much longer than a chat may wait: a turn the panic left held would make its own
    // redeliveries wait, and answer 503.
    let settings = [
        ("BOTFLEET_MAX_ATTEMPTS", "3"),
        ("BOTFLEET_CHAT_LEASE_MS", "60000"),
        ("BOTFLEET_MAX_WAIT_MS", "1000"),
    ];
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &settings).await;
    deliver_ok(&worker, &text_update(1, 42, "a fine post to list")).await;
    // The author's post comes back from Postgres with a NULL text the code cannot expect (schema
    // drift), so listing their posts panics in the handler.
    db.owner()
        .await
        .batch_execute("ALTER TABLE posts ALTER COLUMN text DROP NOT NULL; UPDATE posts SET text = NULL")
        .await
        .unwrap();
    let panicking = text_update(2, 42, "/my");
    let help = text_update(3, 42, "/help");
    let mut statuses = Vec::new();
    for attempt in 0..4 {
        statuses.push(deliver_update(&worker, &MAIN_BOT, &panicking).await.status().as_u16());
        if attempt == 0 {
            // The chat's next update waits for the failed one's redelivery (order), answered at
            // once rather than after a lease the panic left held.
            let held = deliver_update(&worker, &MAIN_BOT, &help).await;
            assert_eq!(held.status(), 503, "held behind the failed update");
        }
    }
    assert_eq!(statuses, [500, 500, 200, 200], "two failed attempts, then dead-lettered and acknowledged");
    deliver_ok(&worker, &help).await;
    let row = db
        .owner()
        .await
        .query_one("SELECT update_id, attempts, error FROM dead_letters", &[])
        .await
        .expect("the panicking update must be in the dead-letter table");
    assert_eq!((row.get::<_, Option<i64>>(0), row.get::<_, i32>(1)), (Some(2), 3));
    assert!(row.get::<_, String>(2).starts_with("the handler panicked: "), "{}", row.get::<_, String>(2));
    assert_eq!(worker.metrics.dead_letters.with_label_values(&["main"]).get(), 1);
    assert_eq!(said_to(&fake, 42).len(), 2, "the first post's reply and /help's, nothing for the panics");
}

#[tokio::test]
async fn bot_state_lost_in_redis_between_delivery_and_redelivery_still_makes_one_post() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let update = text_update(9, 42, "remembered by postgres, not redis");
    deliver_ok(&worker, &update).await;
    // Everything this deployment keeps in Redis is gone, as after a flush.
    let mut conn = redis().await;
    // KEYS is fine here: a test's own, tiny keyspace (the product never uses it).
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty());
    let () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
    deliver_ok(&worker, &update).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1, "the unique constraint must hold the line");
}

#[tokio::test]
async fn photo_with_caption_becomes_a_media_post() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    deliver_ok(&worker, &photo_update(1, 42, "a photo worth a post")).await;
    deliver_ok(&worker, &photo_update(2, 42, "")).await;
    let row = db
        .owner()
        .await
        .query_one("SELECT text, media_file_id, media_unique_id FROM posts", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a photo worth a post");
    assert_eq!(row.get::<_, String>(1), "photo-1", "the largest size's file_id, never a URL");
    assert_eq!(row.get::<_, String>(2), "u-1");
    assert!(said_to(&fake, 42)[1].contains("caption"), "{:?}", said_to(&fake, 42));
}

const OTHER_BOT: TestBot =
    TestBot { name: "other", token: "654321:OTHER-token_secret", secret: "other-secret" };

#[tokio::test]
async fn bots_are_isolated() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT, OTHER_BOT]).await;
    let update = text_update(1, 42, "the same update id, two bots");
    deliver_ok(&worker, &update).await;
    let response = deliver_update(&worker, &OTHER_BOT, &update).await;
    assert_eq!(response.status(), 200);
    let wrong = crate::helpers::deliver(&worker, &OTHER_BOT, Some(MAIN_BOT.secret), update.to_string()).await;
    assert_eq!(wrong.status(), 401, "one bot's secret must not open another's webhook");
    let bots = db.owner().await.query("SELECT bot_id FROM posts ORDER BY bot_id", &[]).await.unwrap();
    let bots: Vec<i64> = bots.iter().map(|r| r.get(0)).collect();
    assert_eq!(bots, [MAIN_BOT.id(), OTHER_BOT.id()]);
    let senders: Vec<i64> = fake.calls().iter().map(|c| c.bot_id).collect();
    assert_eq!(senders, [MAIN_BOT.id(), OTHER_BOT.id()], "each bot replies with its own token");
}
