//! Losing a worker or a caller mid-update loses nothing and duplicates nothing (invariant 1),
//! the token never reaches a log line (invariant 9), SIGTERM drains a worker without losing or
//! failing an update (invariant 11), and a broadcast survives the death of a sender.

use std::process::Stdio;
use std::time::Duration;

use std::collections::HashMap;

use botfleet::fake_telegram::Fake;
use botfleet::kv::FeedKeys;
use botfleet::replay::audit::audit;
use serde_json::json;

use crate::helpers::{
    MAIN_BOT, QUIET, TestDb, WORKER_ROLE, audience, deliver_update, eventually, redis, spawn_fake,
    spawn_worker, spawn_worker_with, text_update, texts_to, unique, watch_output,
};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Settings of the broadcasting workers: 50 messages a second (the feeder keeps 5 s of them,
/// 250 recipients, queued ahead), user 1 an admin, idle outbox entries claimed after 500 ms.
const BROADCASTING: [(&str, &str); 5] = [
    ("BOTFLEET_FLOOD_PER_BOT", "50"),
    ("BOTFLEET_FLOOD_PER_CHAT", "1"),
    ("BOTFLEET_FLOOD_PER_GROUP", "20"),
    ("BOTFLEET_BOT_MAIN_ADMINS", "1"),
    ("BOTFLEET_OUTBOX_CLAIM_MS", "500"),
];

/// A worker as its own process (so it can be SIGKILLed), logging at debug level to `log`.
struct WorkerProcess {
    child: tokio::process::Child,
    url: String,
    admin: String,
    log: std::path::PathBuf,
    /// Copies its output to `log`; ends once the process has exited and all of it is there.
    logging: tokio::task::JoinHandle<()>,
}

impl WorkerProcess {
    /// Telegram's delivery of `update` to this worker.
    fn deliver(
        &self,
        update: &serde_json::Value,
    ) -> impl Future<Output = reqwest::Result<reqwest::Response>> + use<> {
        reqwest::Client::new()
            .post(format!("{}/webhook/main", self.url))
            .header("x-telegram-bot-api-secret-token", MAIN_BOT.secret)
            .body(update.to_string())
            .send()
    }

    /// Delivers `update` to this worker and SIGKILLs it once its reply reached the fake (which
    /// holds it, or its answer): Telegram never gets an answer to the update.
    async fn killed_while_replying(&mut self, fake: &Fake, update: &serde_json::Value) {
        let in_flight = tokio::spawn(self.deliver(update));
        tokio::time::timeout(Duration::from_secs(10), fake.held(1))
            .await
            .expect("the reply never reached Telegram");
        self.child.kill().await.unwrap();
        assert!(in_flight.await.unwrap().is_err(), "Telegram got an answer from the killed worker");
    }
}

/// A worker process; `extra` settings override the defaults.
async fn start_worker_process(
    db: &TestDb,
    prefix: &str,
    telegram: &str,
    extra: &[(&str, &str)],
) -> WorkerProcess {
    let (port, admin) = (free_port(), free_port());
    let log = std::env::temp_dir().join(unique("worker-log"));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_botfleet"))
        .arg("worker")
        .env_clear()
        .envs([
            ("BOTFLEET_LISTEN", format!("127.0.0.1:{port}")),
            ("BOTFLEET_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ("BOTFLEET_DATABASE_URL", db.url(WORKER_ROLE, false)),
            ("BOTFLEET_REDIS_URL", crate::helpers::redis_url(WORKER_ROLE)),
            ("BOTFLEET_REDIS_PREFIX", prefix.to_owned()),
            ("BOTFLEET_TELEGRAM_API_URL", telegram.to_owned()),
            ("BOTFLEET_BOTS", "main".to_owned()),
            ("BOTFLEET_BOT_MAIN_TOKEN", MAIN_BOT.token.to_owned()),
            ("BOTFLEET_BOT_MAIN_WEBHOOK_SECRET", MAIN_BOT.secret.to_owned()),
            ("BOTFLEET_CHAT_LEASE_MS", "1000".to_owned()),
            ("BOTFLEET_LOG", "debug".to_owned()),
        ])
        .envs(QUIET)
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (serving, logging) = watch_output(child.stderr.take().unwrap(), "worker serving", Some(log.clone()));
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the worker process did not start within 10 s")
        .unwrap_or_else(|_| panic!("the worker process exited: {}", std::fs::read_to_string(&log).unwrap()));
    let ready = reqwest::get(format!("http://127.0.0.1:{admin}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "the worker process serves but is not ready");
    WorkerProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin}"),
        log,
        logging,
    }
}

#[tokio::test]
async fn a_worker_killed_mid_update_loses_nothing_and_duplicates_nothing() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let mut doomed = start_worker_process(&db, &prefix, &telegram, &[]).await;
    let survivor = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;

    // Telegram is slow to take the reply: the doomed worker has stored and published the post
    // and is waiting on sendMessage when it dies.
    fake.set_delay(Some(("sendMessage", Duration::from_secs(30))));
    let update = text_update(31, 42, "a post whose worker is killed");
    // Killed while its reply is in flight: the post is committed, the answer not yet given.
    doomed.killed_while_replying(&fake, &update).await;
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1, "committed before the reply");

    // Telegram redelivers; another worker waits out the dead one's lease and finishes the job.
    fake.set_delay(None);
    let response = deliver_update(&survivor, &MAIN_BOT, &update).await;
    assert_eq!(response.status(), 200);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1, "exactly one post");
    let mut conn = crate::helpers::redis().await;
    let published: i64 =
        redis::cmd("XLEN").arg(FeedKeys::new(&prefix).stream).query_async(&mut conn).await.unwrap();
    assert_eq!(published, 1, "published exactly once");
    let replied = fake.calls().iter().filter(|c| c.method == "sendMessage" && c.status == 200).count();
    assert!(replied >= 1, "the author must get the reply");

    doomed.logging.await.unwrap();
    let log = std::fs::read_to_string(&doomed.log).unwrap();
    assert!(log.contains("DEBUG"), "the worker should have logged at debug level: {log}");
    assert!(!log.contains(MAIN_BOT.token), "the bot token leaked into the worker's log");
    assert!(
        !log.contains(MAIN_BOT.token.split(':').nth(1).unwrap()),
        "the token's secret leaked into the log"
    );
    std::fs::remove_file(&doomed.log).ok();
}

/// The one window no design closes: Telegram took the reply, and the worker died before it
/// could record the update handled. The redelivery cannot know (the Bot API has no idempotency
/// key), so it replies again rather than risk saying nothing; the replay's audit tells this
/// copy (in doubt) from a duplicate by the process behind each call.
#[tokio::test]
async fn a_worker_killed_after_telegram_took_its_reply_leaves_a_copy_in_doubt() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let mut doomed = start_worker_process(&db, &prefix, &telegram, &[]).await;
    let survivor = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;

    fake.set_answer_delay(Some(("sendMessage", Duration::from_secs(30))));
    let update = text_update(51, 42, "a post whose reply Telegram took");
    doomed.killed_while_replying(&fake, &update).await;

    fake.set_answer_delay(None);
    assert_eq!(deliver_update(&survivor, &MAIN_BOT, &update).await.status(), 200);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1, "exactly one post");
    let calls: Vec<serde_json::Value> =
        fake.calls().iter().map(|call| serde_json::to_value(call).unwrap()).collect();
    let replies: Vec<&str> = calls
        .iter()
        .filter(|c| c["method"] == "sendMessage")
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert_eq!(replies.len(), 2, "the reply went out twice: {calls:?}");
    assert_ne!(replies[0], replies[1], "each copy names its process");
    let audited = audit(&[(&update, true)], &calls, (&HashMap::from([(51, 1)]), &Default::default()));
    assert_eq!((audited.lost, audited.duplicated, audited.in_doubt), (0, 0, 1), "{audited:?}");
    assert!(audited.passed());
}

#[tokio::test]
async fn a_caller_that_hangs_up_does_not_cut_the_work_in_half() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    fake.set_delay(Some(("sendMessage", Duration::from_millis(500))));
    let update = text_update(41, 42, "the caller will not wait for this");
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
    let hung_up = impatient
        .post(worker.url("/webhook/main"))
        .header("x-telegram-bot-api-secret-token", MAIN_BOT.secret)
        .body(update.to_string())
        .send()
        .await;
    assert!(hung_up.is_err(), "the caller must have given up before the answer");
    // The work still runs to its end: stored, published, replied to, marked done.
    eventually(Duration::from_secs(5), "the reply of the abandoned request", || async {
        fake.calls()
            .iter()
            .any(|c| c.method == "sendMessage" && c.params["chat_id"] == json!(42))
            .then_some(())
    })
    .await;
    fake.set_delay(None);
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &update).await.status(), 200);
    assert_eq!(
        worker.metrics.dedup_hits.with_label_values(&["main"]).get(),
        1,
        "the redelivery finds it done"
    );
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 1);
}

#[tokio::test]
async fn sigterm_drains_a_worker_without_losing_or_failing_an_update() {
    let db = TestDb::fresh().await;
    let (fake, telegram) = spawn_fake(false).await;
    let mut worker = start_worker_process(&db, &unique("r"), &telegram, &[]).await;
    // Five updates are in progress, each waiting on its reply, when SIGTERM comes.
    fake.set_delay(Some(("sendMessage", Duration::from_millis(1500))));
    let client = reqwest::Client::new();
    let url = format!("{}/webhook/main", worker.url);
    let in_progress = futures_util::future::join_all((1..=5).map(|chat| {
        let text = format!("post {chat}, in progress at SIGTERM");
        client
            .post(&url)
            .header("x-telegram-bot-api-secret-token", MAIN_BOT.secret)
            .body(text_update(chat, chat, &text).to_string())
            .send()
    }));
    let pid = worker.child.id().unwrap();
    let readyz = format!("{}/readyz", worker.admin);
    let drain = async {
        fake.held(5).await;
        // Bash's own `kill`: no procps needed.
        let killed =
            std::process::Command::new("bash").args(["-c", &format!("kill -TERM {pid}")]).status().unwrap();
        assert!(killed.success());
        eventually(Duration::from_secs(5), "/readyz failing while the worker drains", || async {
            (reqwest::get(&readyz).await.ok()?.status() == 503).then_some(())
        })
        .await;
    };
    let (responses, ()) = tokio::join!(in_progress, drain);
    for response in responses {
        assert_eq!(response.unwrap().status(), 200, "an update in progress at SIGTERM must finish");
    }
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 5);
    let exited = tokio::time::timeout(Duration::from_secs(10), worker.child.wait()).await;
    assert!(exited.expect("the worker did not exit after draining").unwrap().success());
    assert!(reqwest::Client::new().post(&url).send().await.is_err(), "a drained worker takes nothing new");
    worker.logging.await.unwrap();
    std::fs::remove_file(&worker.log).ok();
}

#[tokio::test]
async fn a_worker_killed_mid_broadcast_misses_nobody_and_duplicates_only_what_was_in_flight() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let mut doomed = start_worker_process(&db, &prefix, &telegram, &BROADCASTING).await;
    let survivor = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &BROADCASTING).await;
    audience(&db, 100).await;
    // Every message takes a while to be answered, so that the doomed worker dies with messages
    // in flight: as many as a sender delivers at once, at most.
    fake.set_delay(Some(("sendMessage", Duration::from_millis(100))));
    let started =
        deliver_update(&survivor, &MAIN_BOT, &text_update(1, 1, "/broadcast Hello through a crash")).await;
    assert_eq!(started.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), fake.held(20))
        .await
        .expect("the broadcast never got going");
    doomed.child.kill().await.unwrap();

    let text = "Hello through a crash";
    let served = || texts_to(&fake, text);
    let mut recipients: Vec<i64> = (1000..1100).collect();
    recipients.push(1);
    eventually(Duration::from_secs(30), "every recipient served after the crash", || async {
        let served = served();
        recipients.iter().all(|r| served.contains(r)).then_some(())
    })
    .await;
    let served = served();
    let duplicates = served.len() - recipients.len();
    let in_flight = botfleet::telegram::outbox::IN_FLIGHT;
    assert!(
        duplicates <= in_flight,
        "only the {in_flight} messages in flight at the kill may go out twice: {duplicates}"
    );
    let redelivered = survivor.metrics.outbox_redeliveries.with_label_values(&["main"]).get();
    assert!(redelivered as usize >= duplicates, "duplicates must be counted: {redelivered} < {duplicates}");
    doomed.logging.await.unwrap();
    std::fs::remove_file(&doomed.log).ok();
}

#[tokio::test]
async fn a_feeder_killed_half_way_is_followed_by_another_from_its_cursor_and_redis_holds_a_window() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    audience(&db, 600).await;
    // Alone at first, the doomed worker holds the bot's feeder lease.
    let mut doomed = start_worker_process(&db, &prefix, &telegram, &BROADCASTING).await;
    let text = "Fed through a crash";
    let started = doomed.deliver(&text_update(1, 1, &format!("/broadcast {text}"))).await.unwrap();
    assert_eq!(started.status(), 200);
    let cursor = "SELECT next_user_id FROM broadcasts";
    eventually(Duration::from_secs(10), "the first recipients queued", || async {
        (db.count(cursor).await >= 1100).then_some(())
    })
    .await;
    doomed.child.kill().await.unwrap();
    let left_at = db.count(cursor).await;
    assert!(left_at < 1599, "the doomed feeder queued everyone ({left_at}), not a window");

    let survivor = spawn_worker_with(&db, &prefix, &telegram, &[MAIN_BOT], &BROADCASTING).await;
    let [outbox, _] = botfleet::kv::BotKeys::new(&prefix, MAIN_BOT.bot_id()).outbox();
    let peak = std::sync::atomic::AtomicI64::new(0);
    let served = || texts_to(&fake, text);
    let mut recipients: Vec<i64> = (1000..1600).collect();
    recipients.push(1);
    eventually(Duration::from_secs(60), "every recipient served after the crash", || async {
        let queued: i64 = redis::cmd("XLEN").arg(&outbox).query_async(&mut redis().await).await.ok()?;
        peak.fetch_max(queued, std::sync::atomic::Ordering::Relaxed);
        let served = served();
        recipients.iter().all(|r| served.contains(r)).then_some(())
    })
    .await;
    let duplicates = served().len() - recipients.len();
    let in_flight = botfleet::telegram::outbox::IN_FLIGHT;
    assert!(duplicates <= in_flight, "only messages in flight at the kill may go out twice: {duplicates}");
    assert_eq!(db.count("SELECT queued::int8 FROM broadcasts WHERE status = 'sending'").await, 601);
    let peak = peak.into_inner();
    assert!(peak <= 250 + 16, "Redis held {peak} recipients, more than the window");
    drop(survivor);
    doomed.logging.await.unwrap();
    std::fs::remove_file(&doomed.log).ok();
}

#[tokio::test]
async fn a_production_worker_logs_json_lines_carrying_the_request_id() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    // No BOTFLEET_ENVIRONMENT: production, where logs are JSON lines.
    let worker = start_worker_process(&db, &unique("r"), &telegram, &[("BOTFLEET_LOG", "info")]).await;
    let response = reqwest::Client::new()
        .post(format!("{}/webhook/main", worker.url))
        .header("x-telegram-bot-api-secret-token", MAIN_BOT.secret)
        .header("x-request-id", "4f1c0ffee0000000000000000000cafe")
        .body("{not an update")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "kept as a dead letter");
    let line = eventually(Duration::from_secs(5), "the error in the worker's log", || async {
        let log = std::fs::read_to_string(&worker.log).ok()?;
        log.lines().find(|l| l.contains("update dead-lettered")).map(str::to_owned)
    })
    .await;
    let log = std::fs::read_to_string(&worker.log).unwrap();
    for other in log.lines() {
        serde_json::from_str::<serde_json::Value>(other)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {other}"));
    }
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["level"], "ERROR");
    assert_eq!(entry["fields"]["bot"], "main");
    let spans = entry["spans"].as_array().expect("the line lists its spans");
    assert!(
        spans.iter().any(|s| s["request_id"] == "4f1c0ffee0000000000000000000cafe"),
        "the request id is on the line: {line}"
    );
}
