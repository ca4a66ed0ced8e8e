//! Each Lua script on its own, against the real Redis.

use botfleet::kv::{BotKeys, FeedKeys, scripts, turns_channel};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;

use crate::helpers::redis;
use crate::helpers::{env, unique};

/// Runs intake_begin for `update` of chat "7" with `token`; waiters count for 500 ms.
async fn begin(conn: &mut MultiplexedConnection, keys: &BotKeys, update: i64, token: &str) -> String {
    let [lease, queue, waiters] = keys.chat_turn("7");
    scripts::INTAKE_BEGIN
        .key(keys.update(update))
        .key(lease)
        .key(queue)
        .key(waiters)
        .arg(update)
        .arg(token)
        .arg(10_000)
        .arg(500)
        .invoke_async(conn)
        .await
        .unwrap()
}

async fn end(
    conn: &mut MultiplexedConnection,
    keys: &BotKeys,
    update: i64,
    token: &str,
    outcome: &str,
) -> i64 {
    let [lease, _, _] = keys.chat_turn("7");
    scripts::INTAKE_END
        .key(keys.update(update))
        .key(&lease)
        .arg(token)
        .arg(outcome)
        .arg(60_000)
        .arg(turns_channel("test"))
        .arg(&lease)
        .invoke_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn intake_gives_one_turn_per_chat_in_update_id_order() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), 1);
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
    assert_eq!(end(&mut conn, &keys, 11, "b", "retry").await, 1);
    assert_eq!(begin(&mut conn, &keys, 12, "c").await, "go");
    // A handled update is done for everyone; a retried one is not.
    assert_eq!(begin(&mut conn, &keys, 10, "z").await, "done");
    assert_eq!(end(&mut conn, &keys, 12, "c", "done").await, 1);
    assert_eq!(begin(&mut conn, &keys, 11, "b2").await, "go", "11 was retried, so it runs again");
    assert_eq!(end(&mut conn, &keys, 11, "x", "done").await, 0, "a stranger cannot end the turn");
}

#[tokio::test]
async fn intake_drops_a_waiter_that_stopped_asking() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), 1);
    assert_eq!(begin(&mut conn, &keys, 20, "a").await, "go");
    // 21 queues, then its worker dies; 22 waits behind it.
    assert_eq!(begin(&mut conn, &keys, 21, "dead").await, "wait");
    assert_eq!(begin(&mut conn, &keys, 22, "c").await, "wait");
    end(&mut conn, &keys, 20, "a", "done").await;
    assert_eq!(begin(&mut conn, &keys, 22, "c").await, "wait", "21 still counts within its deadline");
    let [_, _, waiters] = keys.chat_turn("7");
    // Its deadline passes (set it in the past rather than wait for it).
    let () = redis::cmd("HSET").arg(&waiters).arg(21).arg(0).query_async(&mut conn).await.unwrap();
    assert_eq!(begin(&mut conn, &keys, 22, "c").await, "go");
}

#[tokio::test]
async fn lease_renewal_only_for_the_holder() {
    let mut conn = redis().await;
    let keys = BotKeys::new(&unique("lua"), 1);
    assert_eq!(begin(&mut conn, &keys, 1, "a").await, "go");
    let [lease, _, _] = keys.chat_turn("7");
    let renew = async |conn: &mut MultiplexedConnection, token: &str| -> i64 {
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
    let keys = BotKeys::new(&unique("lua"), 1);
    assert_eq!(begin(&mut conn, &keys, 1, "holder").await, "go");
    let [lease, _, _] = keys.chat_turn("7");
    let key = keys.dialogue(7);
    let save = async |conn: &mut MultiplexedConnection, version: i64, state: &str, token: &str| -> i64 {
        let script = &scripts::DIALOGUE_SAVE;
        script
            .key(&key)
            .key(&lease)
            .arg(version)
            .arg(state)
            .arg(token)
            .arg(60_000)
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
    assert_eq!(v, 0);
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!(exists, 0, "ending the dialogue removes it");
}

#[tokio::test]
async fn publish_post_goes_out_once_atomically() {
    let mut conn = redis().await;
    let deployment = unique("lua");
    let keys = FeedKeys::new(&deployment);
    let client = redis::Client::open(env("BOTFLEET_TEST_REDIS_URL")).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&keys.channel).await.unwrap();
    let publish = async |conn: &mut MultiplexedConnection, post_id: i64, json: &str| -> Option<String> {
        scripts::PUBLISH_POST
            .key(&keys.stream)
            .key(&keys.generation)
            .key(keys.published(post_id))
            .key(&keys.newest)
            .arg(&keys.channel)
            .arg(json)
            .arg(100)
            .arg(60_000)
            .arg(post_id)
            .invoke_async(conn)
            .await
            .unwrap()
    };
    let first = publish(&mut conn, 1, r#"{"id":1}"#).await;
    let offset = first.expect("the first publish must return the stream offset");
    let again = publish(&mut conn, 1, r#"{"id":1}"#).await;
    assert_eq!(again, None, "publishing the same post twice must do nothing");
    let generation: i64 = redis::cmd("GET").arg(&keys.generation).query_async(&mut conn).await.unwrap();
    assert_eq!(generation, 1);
    let newest: i64 = redis::cmd("GET").arg(&keys.newest).query_async(&mut conn).await.unwrap();
    assert_eq!(newest, 1, "the newest published post is recorded for the replica-lag guard");
    let length: i64 = redis::cmd("XLEN").arg(&keys.stream).query_async(&mut conn).await.unwrap();
    assert_eq!(length, 1);
    let message: String = pubsub.on_message().next().await.unwrap().get_payload().unwrap();
    assert_eq!(message, format!(r#"{offset} {{"id":1}}"#));
}

#[tokio::test]
async fn feed_removed_bumps_both_versions_and_only_moves_the_wal_position_forward() {
    let mut conn = redis().await;
    let keys = FeedKeys::new(&unique("lua"));
    let removed = async |conn: &mut MultiplexedConnection, position: i64| -> i64 {
        let script = &scripts::FEED_REMOVED;
        script
            .key(&keys.generation)
            .key(&keys.removals)
            .key(&keys.removal_lsn)
            .arg(position)
            .invoke_async(conn)
            .await
            .unwrap()
    };
    assert_eq!(removed(&mut conn, 500).await, 1);
    assert_eq!(removed(&mut conn, 300).await, 2, "a late, older removal still invalidates");
    let (removals, position): (i64, i64) =
        redis::cmd("MGET").arg(&keys.removals).arg(&keys.removal_lsn).query_async(&mut conn).await.unwrap();
    assert_eq!((removals, position), (2, 500), "the WAL position never goes back");
}
