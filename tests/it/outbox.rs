//! The durable outbox: a message whose sender died is claimed by another and delivered; one
//! that keeps failing ends in the dead stream, counted, after a bounded number of deliveries;
//! broadcasts reach every reachable user once, within Telegram's limits, and can be cancelled.

use std::time::Duration;

use botfleet::kv::BotKeys;
use botfleet::types::UserId;
use redis::streams::StreamInfoConsumersReply;
use serde_json::json;

use botfleet::fake_telegram::Call;

use crate::helpers::{
    MAIN_BOT, Running, TestDb, audience, deliver_update, eventually, outbox_drained, redis, spawn_fake,
    spawn_worker_with, text_update, texts_to, unique,
};

/// The outbox's stream and dead stream, its group created, and one message queued for chat 42
/// that a sender ("ghost") took and then died with.
async fn a_message_left_by_a_dead_sender(prefix: &str) -> [String; 2] {
    let [outbox, dead] = BotKeys::new(prefix, MAIN_BOT.bot_id()).outbox();
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
async fn a_message_whose_sender_died_is_claimed_and_delivered_once_and_the_sender_forgotten() {
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
    // The dead sender leaves the group; the live one stays.
    eventually(Duration::from_secs(5), "the dead sender gone from the group", || async {
        let members: StreamInfoConsumersReply = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&outbox)
            .arg("senders")
            .query_async(&mut redis().await)
            .await
            .ok()?;
        let names: Vec<&str> = members.consumers.iter().map(|c| c.name.as_str()).collect();
        (!names.contains(&"ghost") && names.len() == 1).then_some(())
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

/// Three workers under a little less than Telegram's limits (as in `flood.rs`), user 1 an admin.
async fn broadcasters(db: &TestDb, telegram: &str, per_bot: &str) -> (String, Vec<Running>) {
    broadcasters_on(db, telegram, per_bot, &unique("r")).await
}

/// The admin (user 1) sends `command` as update `update` to `worker`, which takes it (200).
async fn admin_says(worker: &Running, update: i64, command: &str) {
    let response = deliver_update(worker, &MAIN_BOT, &text_update(update, 1, command)).await;
    assert_eq!(response.status(), 200, "{command}");
}

/// [`broadcasters`] on Redis keys of `prefix`.
async fn broadcasters_on(db: &TestDb, telegram: &str, per_bot: &str, prefix: &str) -> (String, Vec<Running>) {
    let prefix = prefix.to_owned();
    let settings = [
        ("BOTFLEET_FLOOD_PER_BOT", per_bot),
        ("BOTFLEET_FLOOD_PER_CHAT", "0.8"),
        ("BOTFLEET_FLOOD_PER_GROUP", "20"),
        ("BOTFLEET_BOT_MAIN_ADMINS", "1"),
    ];
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(spawn_worker_with(db, &prefix, telegram, &[MAIN_BOT], &settings).await);
    }
    (prefix, workers)
}

#[tokio::test]
async fn a_broadcast_reaches_every_reachable_user_once_within_the_limits() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(true).await;
    // 2,001 recipients at a little under the fake's 30 a second: about 75 s.
    let (prefix, workers) = broadcasters(&db, &telegram, "28").await;
    audience(&db, 2000).await;
    admin_says(&workers[0], 1, "/broadcast Hello, everyone").await;
    // The admin (user 1, upserted by their own message) is a user too.
    let mut expected: Vec<i64> = (1000..3000).collect();
    expected.push(1);
    expected.sort_unstable();
    eventually(Duration::from_secs(20), "the broadcast under way", || async {
        (texts_to(&fake, "Hello, everyone").len() >= 100).then_some(())
    })
    .await;
    // The fault: the workers' process stalls for 300 ms, as on a busy host, and every sender due
    // meanwhile wakes late at once (workers, fake and test share this thread). Sent together, they
    // would be over the limit in the next second.
    std::thread::sleep(Duration::from_millis(300));
    eventually(Duration::from_secs(110), "every recipient served", || async {
        (texts_to(&fake, "Hello, everyone").len() >= expected.len()).then_some(())
    })
    .await;
    outbox_drained(&prefix).await;
    let mut got = texts_to(&fake, "Hello, everyone");
    got.sort_unstable();
    assert_eq!(got, expected, "each reachable, unbanned user exactly once");
    let calls = fake.calls();
    let refused: Vec<u16> = calls.iter().map(|c| c.status).filter(|s| *s != 200).collect();
    assert!(refused.is_empty(), "the fake Telegram refused messages past its limits: {refused:?}");
    // Every message of the bot counts (the broadcast's, the replies, the progress edits).
    let at: Vec<u64> = calls.iter().map(|c| c.at_ms).collect();
    let mut busiest = 0;
    for (n, start) in at.iter().enumerate() {
        busiest = busiest.max(at[n..].iter().take_while(|t| **t < start + 1000).count());
    }
    assert!(busiest <= 30, "{busiest} messages within one second");
    // The last sender to finish edits the admin's progress message to the end.
    eventually(Duration::from_secs(10), "the progress message saying done", || async {
        fake.calls()
            .iter()
            .any(|c| {
                c.method == "editMessageText"
                    && c.params["text"] == "Broadcast #1: done, 2001 of 2001 recipients."
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_paid_broadcast_reaches_ten_thousand_users_once_past_the_free_rate_and_replies_go_on() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(true).await;
    let (prefix, workers) = broadcasters(&db, &telegram, "28").await;
    audience(&db, 10_000).await;
    admin_says(&workers[0], 1, "/broadcast --paid Paid news").await;
    // Once every recipient is queued (the reply's user, who writes then, is none of them), a
    // user asks for help: the answer does not wait for the broadcast.
    eventually(Duration::from_secs(60), "every recipient queued", || async {
        (db.count("SELECT count(*) FROM broadcasts WHERE status = 'sending'").await == 1).then_some(())
    })
    .await;
    let help = deliver_update(&workers[1], &MAIN_BOT, &text_update(2, 20_000, "/help")).await;
    assert_eq!(help.status(), 200, "the reply waited past its bound");
    let mut expected: Vec<i64> = (1000..11_000).collect();
    expected.push(1);
    expected.sort_unstable();
    // Counted in Postgres, where each recipient served is journaled: the fake's whole log, read
    // every 20 ms, would cost this thread (the workers' too) more than the broadcast.
    let served = "SELECT count(*) FROM broadcast_deliveries";
    eventually(Duration::from_secs(100), "every recipient served", || async {
        (db.count(served).await >= expected.len() as i64).then_some(())
    })
    .await;
    outbox_drained(&prefix).await;
    let mut got = texts_to(&fake, "Paid news");
    got.sort_unstable();
    assert_eq!(got, expected, "each reachable, unbanned user exactly once");
    let calls = fake.calls();
    let refused: Vec<&Call> = calls.iter().filter(|c| c.status != 200).collect();
    assert!(refused.is_empty(), "the fake Telegram refused calls: {refused:?}");
    let paid: Vec<&Call> = calls.iter().filter(|c| c.params["text"] == "Paid news").collect();
    assert!(paid.iter().all(|c| c.params["allow_paid_broadcast"] == true), "each sent as a paid broadcast");
    let reply = calls.iter().find(|c| c.params["chat_id"] == 20_000).expect("the reply to /help");
    assert!(reply.seq < paid.last().unwrap().seq, "the reply went out while the broadcast ran");
    // Past the free rate (28 a second here): the fake's own clock, first message to last.
    let seconds = (paid.last().unwrap().at_ms - paid[0].at_ms) as f64 / 1000.0;
    let rate = paid.len() as f64 / seconds;
    assert!(rate > 56.0, "a paid broadcast at {rate:.0} messages a second, not past twice the free rate");
}

#[tokio::test]
async fn broadcast_commands_answer_bad_input_and_other_users_clearly_and_start_nothing() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let settings = [("BOTFLEET_BOT_MAIN_ADMINS", "1")];
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &settings).await;
    let says = [
        (1, "/broadcast --paid", "Usage: /broadcast [--paid] <text of 1 to 4096 characters>"),
        (1, "/broadcast", "Usage: /broadcast [--paid] <text of 1 to 4096 characters>"),
        (1, "/broadcast_pause", "No broadcast to pause."),
        (1, "/broadcast_resume", "No paused broadcast to resume."),
        (42, "/broadcast_pause", "Only the bot's admins may do that."),
        (42, "/broadcast --paid Not from an admin", "Only the bot's admins may do that."),
    ];
    for (n, (user, command, answer)) in (1..).zip(says) {
        let response = deliver_update(&worker, &MAIN_BOT, &text_update(n, user, command)).await;
        assert_eq!(response.status(), 200, "{command}");
        let said = fake.calls().last().map(|c| c.params["text"].clone());
        assert_eq!(said, Some(json!(answer)), "{command} from {user}");
    }
    assert_eq!(db.count("SELECT count(*) FROM broadcasts").await, 0);
}

#[tokio::test]
async fn a_paused_broadcast_sends_nothing_until_resumed_then_reaches_everyone_once() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    // Ten messages a second: most of the audience is still to be served when the admin pauses.
    let (prefix, workers) = broadcasters(&db, &telegram, "10").await;
    audience(&db, 150).await;
    let text = "Paused and resumed";
    admin_says(&workers[0], 1, &format!("/broadcast {text}")).await;
    eventually(Duration::from_secs(20), "the broadcast under way", || async {
        (texts_to(&fake, text).len() >= 10).then_some(())
    })
    .await;
    admin_says(&workers[1], 2, "/broadcast_pause").await;
    // Every queued message the senders meet is parked: the outbox drains, and the feeder
    // queues no more.
    outbox_drained(&prefix).await;
    let [_, parked] = BotKeys::new(&prefix, MAIN_BOT.bot_id()).broadcast_pause(1);
    let parked: i64 = redis::cmd("XLEN").arg(&parked).query_async(&mut redis().await).await.unwrap();
    assert!(parked > 0, "nothing parked");
    assert!(db.count("SELECT next_user_id FROM broadcasts").await < 1149, "queued to the end while paused");
    admin_says(&workers[2], 3, "/broadcast_resume").await;
    let mut expected: Vec<i64> = (1000..1150).collect();
    expected.push(1);
    expected.sort_unstable();
    eventually(Duration::from_secs(40), "every recipient served", || async {
        (texts_to(&fake, text).len() >= expected.len()).then_some(())
    })
    .await;
    outbox_drained(&prefix).await;
    let mut got = texts_to(&fake, text);
    got.sort_unstable();
    assert_eq!(got, expected, "each reachable, unbanned user exactly once");
    let calls = fake.calls();
    let said =
        |start: &str| calls.iter().find(|c| c.params["text"].as_str().is_some_and(|t| t.starts_with(start)));
    let paused = said("Broadcast #1 paused").expect("the pause's reply").seq;
    let resumed = said("Broadcast #1 resumed").expect("the resume's reply").seq;
    let meanwhile = calls.iter().filter(|c| c.params["text"] == text && c.seq > paused && c.seq < resumed);
    // At most those already on their way past their last check (one per sender in flight).
    let in_flight = 3 * botfleet::telegram::outbox::IN_FLIGHT;
    assert!(meanwhile.count() <= in_flight, "sent while paused");
    admin_says(&workers[0], 4, "/broadcast_resume").await;
    assert_eq!(texts_to(&fake, "No paused broadcast to resume."), [1], "a second resume resumes nothing");
}

#[tokio::test]
async fn a_user_who_blocked_the_bot_is_left_out_of_later_broadcasts_until_they_write() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let (prefix, workers) = broadcasters(&db, &telegram, "100").await;
    audience(&db, 20).await;
    fake.set_blocked(1005, true);
    let broadcast = async |update: i64, text: &str| {
        admin_says(&workers[0], update, &format!("/broadcast {text}")).await;
        let done = format!("SELECT count(*) FROM broadcasts WHERE status = 'sending' AND text = '{text}'");
        eventually(Duration::from_secs(20), "queued to the end", || async {
            (db.count(&done).await == 1).then_some(())
        })
        .await;
        outbox_drained(&prefix).await;
        fake.calls()
            .iter()
            .filter(|c| c.params["text"] == text)
            .map(|c| (c.params["chat_id"].as_i64().unwrap(), c.status))
            .collect::<Vec<_>>()
    };
    let first = broadcast(1, "Before the block is known").await;
    assert!(first.contains(&(1005, 403)), "refused by Telegram: {first:?}");
    let progress = eventually(Duration::from_secs(10), "the progress message saying done", || async {
        let calls = fake.calls();
        let edits = calls.iter().filter(|c| c.method == "editMessageText");
        edits.filter_map(|c| c.params["text"].as_str()).find(|t| t.contains("done")).map(str::to_owned)
    })
    .await;
    assert_eq!(progress, "Broadcast #1: done, 21 of 21 recipients, 1 could not be reached.");
    let second = broadcast(2, "After the block").await;
    assert!(!second.iter().any(|(chat, _)| *chat == 1005), "a blocked user is not tried again");
    assert_eq!(second.len(), 20);
    fake.set_blocked(1005, false);
    assert_eq!(deliver_update(&workers[1], &MAIN_BOT, &text_update(3, 1005, "/help")).await.status(), 200);
    let third = broadcast(4, "After they wrote").await;
    assert!(third.contains(&(1005, 200)), "reachable again once they wrote");
}

#[tokio::test]
async fn two_broadcasts_of_a_bot_take_turns() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let (prefix, workers) = broadcasters(&db, &telegram, "20").await;
    audience(&db, 100).await;
    for (update, text) in [(1, "The first broadcast"), (2, "The second broadcast")] {
        admin_says(&workers[0], update, &format!("/broadcast {text}")).await;
    }
    eventually(Duration::from_secs(40), "both served to the end", || async {
        (db.count("SELECT count(*) FROM broadcast_deliveries").await == 2 * 101).then_some(())
    })
    .await;
    outbox_drained(&prefix).await;
    let calls = fake.calls();
    let seqs =
        |text: &str| calls.iter().filter(|c| c.params["text"] == text).map(|c| c.seq).collect::<Vec<_>>();
    let (first, second) = (seqs("The first broadcast"), seqs("The second broadcast"));
    assert_eq!((first.len(), second.len()), (101, 101), "each recipient once for each");
    assert!(second[0] < first[50], "the second waited for half of the first: it began at #{}", second[0]);
}

#[tokio::test]
async fn broadcast_cancel_drops_what_is_still_queued() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    // Two messages a second: most of the audience is still queued when the admin cancels.
    let (prefix, workers) = broadcasters(&db, &telegram, "2").await;
    audience(&db, 40).await;
    admin_says(&workers[0], 1, "/broadcast Soon cancelled").await;
    admin_says(&workers[1], 2, "/broadcast_cancel").await;
    outbox_drained(&prefix).await;
    let served = texts_to(&fake, "Soon cancelled").len();
    assert!(served < 20, "the cancelled broadcast went on: {served} of 41 served");
    let replies: Vec<String> = fake
        .calls()
        .iter()
        .filter(|c| c.params["chat_id"] == json!(1) && c.method == "sendMessage")
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(replies.iter().any(|t| t.starts_with("Broadcast #1 cancelled")), "{replies:?}");
    assert_eq!(db.count("SELECT count(*) FROM broadcasts WHERE status = 'cancelled'").await, 1);
    // Messages already waiting for their moment when the cancel came are not sent either (at
    // most one may have been on its way, past its last check: moments are half a second apart).
    let calls = fake.calls();
    let cancelled =
        |c: &&Call| c.params["text"].as_str().is_some_and(|t| t.starts_with("Broadcast #1 cancelled"));
    let reply = calls.iter().find(cancelled).unwrap().seq;
    let after: Vec<u64> = calls
        .iter()
        .filter(|c| c.params["text"] == "Soon cancelled" && c.seq > reply)
        .map(|c| c.seq)
        .collect();
    assert!(after.len() <= 1, "sent after the cancel's reply (#{reply}): {after:?}");
}

#[tokio::test]
async fn a_broadcast_stores_its_text_once_and_its_outbox_entries_carry_none() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    // One message a second: the audience is still queued a moment later.
    let (prefix, workers) = broadcasters(&db, &telegram, "1").await;
    audience(&db, 40).await;
    let text = format!("{}the end.", "A long text, stored once; ".repeat(100));
    admin_says(&workers[0], 1, &format!("/broadcast {text}")).await;
    let [outbox, _] = BotKeys::new(&prefix, MAIN_BOT.bot_id()).outbox();
    let entries = eventually(Duration::from_secs(10), "the audience queued", || async {
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XRANGE").arg(&outbox).arg("-").arg("+").query_async(&mut redis().await).await.ok()?;
        (entries.len() >= 30).then_some(entries)
    })
    .await;
    for (_, fields) in &entries {
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["chat", "id", "broadcast"], "a recipient and the broadcast, no text");
    }
    let stored = format!("SELECT count(*) FROM broadcasts WHERE length(text) = {}", text.len());
    assert_eq!(db.count(&stored).await, 1);
    // The senders read the text from Postgres, and the recipients get it whole.
    eventually(Duration::from_secs(10), "the first recipients served", || async {
        (texts_to(&fake, &text).len() >= 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_broadcast_whose_feeder_died_is_queued_on_from_its_cursor_or_its_mark() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    audience(&db, 30).await;
    // Two broadcasts whose feeder died: #5 after queueing users up to 1009 (its mark in Redis
    // and its cursor in Postgres agree), #6 after queueing up to 1014 in Redis but before its
    // cursor moved past 1009 (those five are in the outbox already, as the mark says).
    let prefix = unique("r");
    let keys = BotKeys::new(&prefix, MAIN_BOT.bot_id());
    let mut conn = redis().await;
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.outbox()[0])
        .arg("senders")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    botfleet::telegram::outbox::queued_through(&mut conn, &keys, 5, UserId(1009)).await.unwrap();
    for user in 1010..=1014 {
        botfleet::telegram::outbox::add_recipient(&mut conn, &keys, 6, UserId(user)).await.unwrap();
    }
    botfleet::telegram::outbox::queued_through(&mut conn, &keys, 6, UserId(1014)).await.unwrap();
    db.owner()
        .await
        .execute(
            "INSERT INTO broadcasts (id, bot_id, update_id, origin, admin_chat, text, next_user_id, queued)
             OVERRIDING SYSTEM VALUE
             VALUES (5, $1, 1, 'm:1:1', 1, 'Resumed at the cursor', 1009, 11),
                    (6, $1, 2, 'm:1:2', 1, 'Resumed at the mark', 1009, 11)",
            &[&MAIN_BOT.id()],
        )
        .await
        .unwrap();
    let (_, _workers) = broadcasters_on(&db, &telegram, "100", &prefix).await;
    let sent = "SELECT count(*) FROM broadcasts WHERE status = 'sending'";
    eventually(Duration::from_secs(20), "both queued to the end", || async {
        (db.count(sent).await == 2).then_some(())
    })
    .await;
    outbox_drained(&prefix).await;
    let mut served = texts_to(&fake, "Resumed at the cursor");
    served.sort_unstable();
    assert_eq!(served, (1010..1030).collect::<Vec<i64>>(), "only the recipients after the cursor");
    let mut served = texts_to(&fake, "Resumed at the mark");
    served.sort_unstable();
    assert_eq!(served, (1010..1030).collect::<Vec<i64>>(), "each once: those before the mark were queued");
    assert_eq!(db.count("SELECT sum(queued)::int8 FROM broadcasts").await, 31 + 31);
}

#[tokio::test]
async fn notices_are_journaled_until_delivered_and_one_redis_lost_is_queued_again_once() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let prefix = unique("r");
    let settings = [("BOTFLEET_BOT_MAIN_MODERATOR_CHAT", "-100200"), ("BOTFLEET_RECONCILE_SECS", "1")];
    let worker = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    // A post for the moderators: its review is journaled, delivered, and marked so.
    let post = text_update(1, 42, "a post the moderators must see");
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &post).await.status(), 200);
    eventually(Duration::from_secs(10), "the review journaled as delivered", || async {
        let sent =
            db.count("SELECT count(*) FROM notices WHERE id = 'review:1' AND sent_at IS NOT NULL").await;
        (sent == 1).then_some(())
    })
    .await;
    // A verdict Postgres journaled a minute ago, whose queue entry Redis lost (it never had it
    // here): the reconciler queues it again, and it goes out once.
    let text = "Your post #7 was published.";
    db.owner()
        .await
        .execute(
            "INSERT INTO notices (bot_id, id, chat_id, text, created_at) VALUES ($1, 'verdict:7', 42, $2, now() - interval '1 minute')",
            &[&MAIN_BOT.id(), &text],
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the lost verdict delivered and journaled", || async {
        let sent =
            db.count("SELECT count(*) FROM notices WHERE id = 'verdict:7' AND sent_at IS NOT NULL").await;
        (sent == 1).then_some(())
    })
    .await;
    assert_eq!(texts_to(&fake, text), [42], "once");
    assert_eq!(worker.metrics.outbox_rebuilt.with_label_values(&["main", "notice"]).get(), 1);
    outbox_drained(&prefix).await;
}

#[tokio::test]
async fn a_broadcast_tail_redis_lost_is_queued_again_to_those_not_served_yet() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    audience(&db, 20).await;
    // A broadcast Postgres says is queued through user 1019, whose queue Redis lost (restarted
    // empty): the senders had served users 1000..=1004 before.
    let text = "A broadcast half lost";
    db.owner()
        .await
        .batch_execute(&format!(
            "INSERT INTO broadcasts (id, bot_id, update_id, origin, admin_chat, text, status, next_user_id, queued)
             OVERRIDING SYSTEM VALUE VALUES (5, {}, 1, 'm:1:1', 1, '{text}', 'sending', 1019, 20);
             INSERT INTO broadcast_deliveries SELECT 5, g FROM generate_series(1000, 1004) g;",
            MAIN_BOT.id()
        ))
        .await
        .unwrap();
    let prefix = unique("r");
    let settings = [("BOTFLEET_RECONCILE_SECS", "1")];
    let worker = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &settings).await;
    eventually(Duration::from_secs(20), "every recipient not served before", || async {
        (db.count("SELECT count(*) FROM broadcast_deliveries WHERE broadcast_id = 5").await == 20)
            .then_some(())
    })
    .await;
    let mut served = texts_to(&fake, text);
    served.sort_unstable();
    assert_eq!(served, (1005..=1019).collect::<Vec<i64>>(), "each once, and none served before");
    assert_eq!(worker.metrics.outbox_rebuilt.with_label_values(&["main", "recipient"]).get(), 15);
    outbox_drained(&prefix).await;
}
