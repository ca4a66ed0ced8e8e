//! Each Lua script on its own, against the real Redis.

use botfleet::feed::{self, Author, PostView};
use botfleet::intake::fingerprint;
use botfleet::kv::Conn;
use botfleet::kv::{BotKeys, FeedKeys, scripts, turns_channel};
use botfleet::types::{BotId, ChatId, PostId, UpdateId, UserId};
use futures_util::StreamExt;

use crate::helpers::redis;
use crate::helpers::{env, unique};

/// The fingerprint of update `update` when the test does not say what it is.
fn same(update: i64) -> u16 {
    fingerprint(&format!("update {update}"))
}

/// Runs intake_begin for `update` (with `fingerprint`) of chat "7" with `token`, reading
/// `read_ahead` keys with a turn; waiters count for 500 ms. Returns the answer and the values
/// read.
async fn begin_as(
    conn: &mut Conn,
    keys: &BotKeys,
    (update, fingerprint): (i64, u16),
    token: &str,
    read_ahead: &[&str],
) -> Vec<Option<String>> {
    let [lease, queue, waiters, hold] = keys.chat_turn("7");
    let (handled, bit) = keys.handled("7", UpdateId(update));
    let mut script = scripts::INTAKE_BEGIN.key(handled);
    script.key(lease).key(queue).key(waiters).key(hold);
    for key in read_ahead {
        script.key(*key);
    }
    script
        .arg(update)
        .arg(token)
        .arg(10_000)
        .arg(500)
        .arg(bit)
        .arg(fingerprint)
        .arg(60_000)
        .invoke_async(conn)
        .await
        .unwrap()
}

async fn begin_reading(
    conn: &mut Conn,
    keys: &BotKeys,
    update: i64,
    token: &str,
    read_ahead: &[&str],
) -> Vec<Option<String>> {
    begin_as(conn, keys, (update, same(update)), token, read_ahead).await
}

async fn begin(conn: &mut Conn, keys: &BotKeys, update: i64, token: &str) -> String {
    let answer = begin_reading(conn, keys, update, token, &[]).await;
    let expected = if answer[0].as_deref() == Some("held") { 2 } else { 1 };
    assert_eq!(answer.len(), expected, "no values without read-ahead keys: {answer:?}");
    answer[0].clone().unwrap()
}

async fn end(conn: &mut Conn, keys: &BotKeys, update: i64, token: &str, outcome: &str) -> i64 {
    end_as(conn, keys, (update, same(update)), token, outcome).await
}

/// Runs intake_end for `update` (with `fingerprint`); a failure holds the chat for 60 s.
async fn end_as(
    conn: &mut Conn,
    keys: &BotKeys,
    (update, fingerprint): (i64, u16),
    token: &str,
    outcome: &str,
) -> i64 {
    let [lease, queue, _, hold] = keys.chat_turn("7");
    let (handled, bit) = keys.handled("7", UpdateId(update));
    scripts::INTAKE_END
        .key(handled)
        .key(&lease)
        .key(queue)
        .key(hold)
        .arg(token)
        .arg(outcome)
        .arg(60_000)
        .arg(turns_channel(&lease))
        .arg(&lease)
        .arg(bit)
        .arg(fingerprint)
        .arg(update)
        .arg(60_000)
        .invoke_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn intake_gives_one_turn_per_chat_in_update_id_order() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    assert_eq!(begin(&mut conn, &keys, 10, "a").await, "go");
    assert_eq!(begin(&mut conn, &keys, 10, "a").await, "go", "the holder asking again keeps its turn");
    // Three updates wait while 10 is handled, arriving out of order.
    for (update, token) in [(13, "d"), (11, "b"), (12, "c")] {
        assert_eq!(begin(&mut conn, &keys, update, token).await, "wait");
    }
    assert_eq!(end(&mut conn, &keys, 10, "a", "done").await, 1);
    // The highest asks first, but the lowest waiting id goes first.
    assert_eq!(begin(&mut conn, &keys, 13, "d").await, "wait");
    assert_eq!(begin(&mut conn, &keys, 12, "c").await, "wait");
    assert_eq!(begin(&mut conn, &keys, 11, "b").await, "go");
    assert_eq!(end(&mut conn, &keys, 11, "b", "done").await, 1);
    assert_eq!(begin(&mut conn, &keys, 12, "c").await, "go");
    // A handled update is done for everyone.
    assert_eq!(begin(&mut conn, &keys, 10, "z").await, "done");
    assert_eq!(end(&mut conn, &keys, 12, "x", "done").await, 0, "a stranger cannot end the turn");
}

#[tokio::test]
async fn a_failed_update_holds_its_chats_later_updates_until_it_is_handled() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    assert_eq!(begin(&mut conn, &keys, 10, "a").await, "go");
    assert_eq!(begin(&mut conn, &keys, 11, "b").await, "wait");
    assert_eq!(end(&mut conn, &keys, 10, "a", "retry").await, 1);
    // 10 failed: 11 (and every later update of the chat) waits for 10's redelivery.
    let held = begin_reading(&mut conn, &keys, 11, "b", &[]).await;
    assert_eq!(held, [Some("held".into()), Some("10".into())]);
    assert_eq!(begin(&mut conn, &keys, 12, "c").await, "held");
    assert_eq!(begin(&mut conn, &keys, 9, "z").await, "go", "an earlier update is not held back");
    assert_eq!(end(&mut conn, &keys, 9, "z", "done").await, 1);
    // 10 comes back, fails again (the hold stays), then is handled: 11 may go.
    assert_eq!(begin(&mut conn, &keys, 10, "a2").await, "go");
    assert_eq!(end(&mut conn, &keys, 10, "a2", "retry").await, 1);
    assert_eq!(begin(&mut conn, &keys, 11, "b").await, "held");
    assert_eq!(begin(&mut conn, &keys, 10, "a3").await, "go");
    assert_eq!(end(&mut conn, &keys, 10, "a3", "done").await, 1);
    assert_eq!(begin(&mut conn, &keys, 11, "b").await, "go");
    let [.., hold] = keys.chat_turn("7");
    let () = redis::cmd("SET").arg(&hold).arg(11).query_async(&mut conn).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(&hold).query_async(&mut conn).await.unwrap();
    assert_eq!(ttl, -1, "set by the test without expiry");
    assert_eq!(end(&mut conn, &keys, 11, "b", "retry").await, 1);
    let ttl: i64 = redis::cmd("PTTL").arg(&hold).query_async(&mut conn).await.unwrap();
    assert!((59_000..=60_000).contains(&ttl), "a hold expires (60 s here), PTTL {ttl}");
}

#[tokio::test]
async fn an_update_whose_worker_died_holds_its_chat_until_its_redelivery() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    assert_eq!(begin(&mut conn, &keys, 30, "dies").await, "go");
    // Its worker dies: the lease expires (deleted here rather than waited for).
    let [lease, ..] = keys.chat_turn("7");
    let () = redis::cmd("DEL").arg(&lease).query_async(&mut conn).await.unwrap();
    assert_eq!(begin(&mut conn, &keys, 31, "b").await, "held", "31 waits for 30's redelivery");
    assert_eq!(begin(&mut conn, &keys, 30, "again").await, "go");
    assert_eq!(end(&mut conn, &keys, 30, "again", "done").await, 1);
    assert_eq!(begin(&mut conn, &keys, 31, "b").await, "go");
}

#[tokio::test]
async fn an_update_id_that_comes_back_as_another_update_is_handled_as_new() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    let (old, new) = (fingerprint("m:7:100"), fingerprint("m:7:5000"));
    assert_ne!(old, new);
    assert_eq!(begin_as(&mut conn, &keys, (40, old), "a", &[]).await, [Some("go".into())]);
    assert_eq!(end_as(&mut conn, &keys, (40, old), "a", "done").await, 1);
    assert_eq!(begin_as(&mut conn, &keys, (40, old), "b", &[]).await, [Some("done".into())], "a redelivery");
    // A week later Telegram starts its ids anew: 40 is another message now.
    assert_eq!(begin_as(&mut conn, &keys, (40, new), "c", &[]).await, [Some("reused".into())]);
    assert_eq!(end_as(&mut conn, &keys, (40, new), "c", "done").await, 1);
    assert_eq!(begin_as(&mut conn, &keys, (40, new), "d", &[]).await, [Some("done".into())]);
}

#[tokio::test]
async fn intake_reads_the_user_and_dialogue_with_the_turn_only() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    let (user, dialogue) = (keys.user(UserId(7)), keys.dialogue(ChatId(7)));
    let () = redis::cmd("SET").arg(&user).arg("cached").query_async(&mut conn).await.unwrap();
    let go = begin_reading(&mut conn, &keys, 1, "a", &[&user, &dialogue]).await;
    assert_eq!(go, [Some("go".into()), Some("cached".into()), None, None, None, None], "no dialogue yet");
    let () = redis::cmd("HSET")
        .arg(&dialogue)
        .arg(&["v", "3", "s", "{}", "u", "1", "p", ""])
        .query_async(&mut conn)
        .await
        .unwrap();
    let wait = begin_reading(&mut conn, &keys, 2, "b", &[&user, &dialogue]).await;
    assert_eq!(wait, [Some("wait".into())], "a waiter reads nothing: the holder may still change it");
    end(&mut conn, &keys, 1, "a", "done").await;
    let go = begin_reading(&mut conn, &keys, 2, "b", &[&user, &dialogue]).await;
    let fields = ["cached", "3", "{}", "1", ""].map(|v| Some(v.to_owned()));
    assert_eq!(go, [&[Some("go".to_owned())][..], &fields].concat());
    let done = begin_reading(&mut conn, &keys, 1, "c", &[&user, &dialogue]).await;
    assert_eq!(done, [Some("done".into())]);
}

#[tokio::test]
async fn intake_end_wakes_the_chat_only_when_someone_waits() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    let [lease, ..] = keys.chat_turn("7");
    let channel = turns_channel(&lease);
    let mut wakes = crate::helpers::redis_client(&env("BOTFLEET_TEST_REDIS_URL")).pubsub().await.unwrap();
    wakes.subscribe(&channel).await.unwrap();
    let mut wakes = wakes.into_on_message();
    // Nobody waits for update 1's turn: ending it publishes nothing, so the marker published
    // next (on the same connection, hence after it) is the first message.
    assert_eq!(begin(&mut conn, &keys, 1, "a").await, "go");
    end(&mut conn, &keys, 1, "a", "done").await;
    let () = redis::cmd("PUBLISH").arg(&channel).arg("marker").query_async(&mut conn).await.unwrap();
    assert_eq!(wakes.next().await.unwrap().get_payload::<String>().unwrap(), "marker");
    // Update 3 waits for 2's turn: ending 2 wakes the chat.
    assert_eq!(begin(&mut conn, &keys, 2, "b").await, "go");
    assert_eq!(begin(&mut conn, &keys, 3, "c").await, "wait");
    end(&mut conn, &keys, 2, "b", "done").await;
    assert_eq!(wakes.next().await.unwrap().get_payload::<String>().unwrap(), lease);
}

#[tokio::test]
async fn intake_remembers_handled_updates_by_fingerprint_for_a_day() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    let (high, low) = ((5 << 16) + 10, 10);
    let field = |id| keys.handled("7", UpdateId(id)).1;
    assert_eq!(field(high), field(low), "the same field in two hashes");
    assert_eq!(begin(&mut conn, &keys, high, "a").await, "go");
    end(&mut conn, &keys, high, "a", "done").await;
    assert_eq!(begin(&mut conn, &keys, high, "b").await, "done");
    assert_eq!(begin(&mut conn, &keys, high + 1, "c").await, "go", "its neighbour is not handled");
    end(&mut conn, &keys, high + 1, "c", "done").await;
    assert_eq!(begin(&mut conn, &keys, low, "d").await, "go", "nor is the same field of another hash");
    let ttl: i64 =
        redis::cmd("PTTL").arg(keys.handled("7", UpdateId(high)).0).query_async(&mut conn).await.unwrap();
    assert!((59_000..=60_000).contains(&ttl), "remembered as long as asked (60 s here), PTTL {ttl}");
}

#[tokio::test]
async fn intake_drops_a_waiter_that_stopped_asking() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    assert_eq!(begin(&mut conn, &keys, 20, "a").await, "go");
    // 21 queues, then its worker dies; 22 waits behind it.
    assert_eq!(begin(&mut conn, &keys, 21, "dead").await, "wait");
    assert_eq!(begin(&mut conn, &keys, 22, "c").await, "wait");
    end(&mut conn, &keys, 20, "a", "done").await;
    assert_eq!(begin(&mut conn, &keys, 22, "c").await, "wait", "21 still counts within its deadline");
    let [_, _, waiters, _] = keys.chat_turn("7");
    // Its deadline passes (set it in the past rather than wait for it).
    let () = redis::cmd("HSET").arg(&waiters).arg(21).arg(0).query_async(&mut conn).await.unwrap();
    assert_eq!(begin(&mut conn, &keys, 22, "c").await, "go");
}

#[tokio::test]
async fn lease_renewal_only_for_the_holder() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    assert_eq!(begin(&mut conn, &keys, 1, "a").await, "go");
    let [lease, ..] = keys.chat_turn("7");
    let renew = async |conn: &mut Conn, token: &str| -> i64 {
        scripts::LEASE_RENEW.key(&lease).arg(token).arg(99_000).invoke_async(conn).await.unwrap()
    };
    let renewed = renew(&mut conn, "a").await;
    assert_eq!(renewed, 1);
    let ttl: i64 = redis::cmd("PTTL").arg(&lease).query_async(&mut conn).await.unwrap();
    assert!(ttl > 10_000, "the lease must have been extended, PTTL {ttl}");
    let stolen = renew(&mut conn, "b").await;
    assert_eq!(stolen, 0);
}

#[tokio::test]
async fn dialogue_save_is_compare_and_set_fenced_by_the_lease() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), BotId(1));
    assert_eq!(begin(&mut conn, &keys, 1, "holder").await, "go");
    let [lease, ..] = keys.chat_turn("7");
    let key = keys.dialogue(ChatId(7));
    let save = async |conn: &mut Conn, version: i64, state: &str, token: &str| -> i64 {
        let script = &scripts::DIALOGUE_SAVE;
        script
            .key(&key)
            .key(&lease)
            .arg(version)
            .arg(state)
            .arg(token)
            .arg(60_000)
            .arg(1)
            .arg(r#"{"step":"before"}"#)
            .invoke_async(conn)
            .await
            .unwrap()
    };
    let v = save(&mut conn, 0, r#"{"step":"await_text"}"#, "holder").await;
    assert_eq!(v, 1);
    let stale = save(&mut conn, 0, r#"{"step":"idle"}"#, "holder").await;
    assert_eq!(stale, -1, "a save from an old version must be refused");
    let fenced = save(&mut conn, 1, r#"{"step":"idle"}"#, "expired").await;
    assert_eq!(fenced, -1, "a writer without the lease must be refused");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "an abandoned dialogue must expire, PTTL {ttl}");
    let v = save(&mut conn, 1, "", "holder").await;
    assert_eq!(v, 2);
    let fields: Vec<Option<String>> =
        redis::cmd("HMGET").arg(&key).arg(&["v", "s", "u", "p"]).query_async(&mut conn).await.unwrap();
    let expected = ["2", "", "1", r#"{"step":"before"}"#].map(|v| Some(v.to_owned()));
    assert_eq!(fields, expected, "an ended dialogue keeps its last step until it expires");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "an ended dialogue must expire too, PTTL {ttl}");
}

#[tokio::test]
async fn publish_post_sends_each_post_once_and_moves_the_generation_once_per_call() {
    let mut conn = redis().await;
    let deployment = unique("lua");
    let keys = FeedKeys::new(&deployment);
    let client = crate::helpers::redis_client(&env("BOTFLEET_TEST_REDIS_URL"));
    let mut pubsub = client.pubsub().await.unwrap();
    pubsub.subscribe(&keys.channel).await.unwrap();
    let post = |id: i64| PostView {
        id: PostId(id),
        bot_id: BotId(1),
        text: format!("post {id}"),
        has_media: false,
        published_at: chrono::DateTime::UNIX_EPOCH,
        author: Author { first_name: "Ada".into(), username: None },
    };
    let read = async |conn: &mut Conn, key: &str| -> Option<i64> {
        redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
    };
    let first = feed::publish::publish(&mut conn, &keys, &[post(1)], 100, 1000).await.unwrap();
    let [Some(offset)] = first.as_slice() else {
        panic!("the first publish must return an offset: {first:?}")
    };
    let generation = read(&mut conn, &keys.generation).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL").arg(keys.published(PostId(1)).0).query_async(&mut conn).await.unwrap();
    assert!(ttl > 23 * 3600 * 1000, "a published post is remembered for a day, PTTL {ttl}");
    // A batch with a post that went out before: only the new one goes out.
    let second = feed::publish::publish(&mut conn, &keys, &[post(1), post(2)], 100, 2000).await.unwrap();
    assert!(second[0].is_none() && second[1].is_some(), "{second:?}");
    let next = read(&mut conn, &keys.generation).await.unwrap();
    assert!(next > generation, "a new version per call that published: {generation}, then {next}");
    assert_eq!(read(&mut conn, &keys.wal_position).await, Some(2000), "for the replica-lag guard");
    // Nothing new: nothing changes.
    let again = feed::publish::publish(&mut conn, &keys, &[post(2), post(1)], 100, 3000).await.unwrap();
    assert_eq!(again, vec![None, None]);
    assert_eq!(read(&mut conn, &keys.generation).await, Some(next));
    assert_eq!(read(&mut conn, &keys.wal_position).await, Some(2000));
    let length: i64 = redis::cmd("XLEN").arg(&keys.stream).query_async(&mut conn).await.unwrap();
    assert_eq!(length, 2);
    // The position is the highest published, in whatever order two workers' calls come.
    feed::publish::publish(&mut conn, &keys, &[post(5), post(4)], 100, 5000).await.unwrap();
    assert_eq!(read(&mut conn, &keys.wal_position).await, Some(5000));
    feed::publish::publish(&mut conn, &keys, &[post(3)], 100, 4000).await.unwrap();
    assert_eq!(read(&mut conn, &keys.wal_position).await, Some(5000), "never back to an older position");
    let mut messages = pubsub.on_message();
    let message: String = messages.next().await.unwrap().get_payload().unwrap();
    assert_eq!(message, format!("{offset} {}", serde_json::to_string(&post(1)).unwrap()));
    let message: String = messages.next().await.unwrap().get_payload().unwrap();
    assert!(message.ends_with(&serde_json::to_string(&post(2)).unwrap()), "{message}");
}

#[tokio::test]
async fn feed_removed_bumps_both_versions_and_only_moves_the_wal_position_forward() {
    let mut conn = redis().await;
    let keys = FeedKeys::new(&unique("lua"));
    let removed = async |conn: &mut Conn, position: i64| -> i64 {
        let script = &scripts::FEED_REMOVED;
        script
            .key(&keys.generation)
            .key(&keys.removals)
            .key(&keys.wal_position)
            .arg(position)
            .invoke_async(conn)
            .await
            .unwrap()
    };
    let first = removed(&mut conn, 500).await;
    let (removals, _): (i64, i64) =
        redis::cmd("MGET").arg(&keys.removals).arg(&keys.wal_position).query_async(&mut conn).await.unwrap();
    assert!(removed(&mut conn, 300).await > first, "a late, older removal still invalidates");
    let (later, position): (i64, i64) =
        redis::cmd("MGET").arg(&keys.removals).arg(&keys.wal_position).query_async(&mut conn).await.unwrap();
    assert!(later > removals, "{removals}, then {later}");
    assert_eq!(position, 500, "the WAL position never goes back");
}

#[tokio::test]
async fn feed_versions_never_go_back_even_when_redis_does() {
    let mut conn = redis().await;
    let keys = FeedKeys::new(&unique("lua"));
    let state = async |conn: &mut Conn, seen: (i64, i64)| -> (i64, i64, Option<i64>) {
        let script = &scripts::FEED_STATE;
        let mut call = script.key(&keys.generation);
        call.key(&keys.removals).key(&keys.wal_position).arg(seen.0).arg(seen.1);
        call.invoke_async(conn).await.unwrap()
    };
    // A new deployment: versions start at the time in microseconds, the position unknown.
    let (generation, removals, position) = state(&mut conn, (0, 0)).await;
    assert!(generation > 1_700_000_000_000_000 && removals > 1_700_000_000_000_000, "{generation}");
    assert_eq!(position, None);
    let () = redis::cmd("SET").arg(&keys.wal_position).arg(800).query_async(&mut conn).await.unwrap();
    assert_eq!(state(&mut conn, (generation, removals)).await, (generation, removals, Some(800)));
    // Redis went back (a failover lost the last second): the versions move past what was seen,
    // and the position that went back with them is dropped.
    let () =
        redis::cmd("SET").arg(&keys.generation).arg(generation - 5).query_async(&mut conn).await.unwrap();
    let (after, same, position) = state(&mut conn, (generation, removals)).await;
    assert!(after > generation, "{after} must be past {generation}");
    assert_eq!((same, position), (removals, None));
}

#[tokio::test]
async fn flood_take_reserves_spaced_moments_and_waits_out_a_pause() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("r"), BotId(1));
    // The bot: one message a second; each chat: one in ten seconds.
    let take = async |conn: &mut Conn, chat: i64, max_ms: u64| -> i64 {
        let [bot, chat, pause] = keys.flood(ChatId(chat), false);
        let mut script = scripts::FLOOD_TAKE.key(bot);
        script.key(chat).key(pause).arg(1_000_000).arg(10_000_000).arg(max_ms);
        script.invoke_async(conn).await.unwrap()
    };
    assert_eq!(take(&mut conn, 1, 60_000).await, 0, "the first message goes at once");
    let second = take(&mut conn, 2, 60_000).await;
    assert!((500..=1_000).contains(&second), "another chat waits for the bot's next moment: {second}");
    let third = take(&mut conn, 1, 60_000).await;
    assert!((9_500..=10_000).contains(&third), "the same chat waits for its own: {third}");
    // A wait past the caller's bound reserves nothing: asked again, the same moment comes back.
    let refused = take(&mut conn, 3, 100).await;
    assert!((-11_000..=-10_500).contains(&refused), "{refused}");
    let again = take(&mut conn, 3, 60_000).await;
    assert!((10_500..=11_000).contains(&again), "a refused wait must not move the schedule: {again}");
    // A pause after a 429 holds back every chat of the bot until it ends.
    let [_, _, pause] = keys.flood(ChatId(4), false);
    let () = redis::cmd("SET").arg(&pause).arg(1).arg("PX").arg(30_000).query_async(&mut conn).await.unwrap();
    let paused = take(&mut conn, 4, 60_000).await;
    assert!((29_500..=30_000).contains(&paused), "{paused}");
}
