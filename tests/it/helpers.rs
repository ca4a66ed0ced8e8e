//! What every integration test stands on: a fresh database per test (cloned from a migrated
//! template), a Redis key prefix of its own, and the real processes on `127.0.0.1:0`.
//!
//! `bin/test` starts the servers and exports their URLs; a test run without them fails at once
//! with a message that says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use botfleet::fake_telegram::Fake;
use botfleet::metrics::Metrics;
use botfleet::settings::{self, ApiSettings, MigrateSettings, Secret, Source, WorkerSettings};
use botfleet::shutdown::CancellationToken;
use botfleet::store::migrations;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use url::Url;

pub const WORKER_ROLE: &str = "botfleet_worker";
pub const API_ROLE: &str = "botfleet_api";
const TEMPLATE: &str = "botfleet_template";

pub fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("{key} is not set: run the tests with bin/test"))
}

/// Connects and drives the connection in the background.
pub async fn connect(url: &str) -> Client {
    botfleet::store::connect(url).await.unwrap_or_else(|e| panic!("connecting to {url}: {e:#}"))
}

/// Polls `check` every 20 ms until it returns `Some`, failing with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a child process's output to its end (a full pipe would stop the child), copying it to
/// `log` if given. The receiver gets the first line containing `marker` — the child's own word
/// that it is up — or an error if the output ends without one. The task ends with the output,
/// once all of it is in `log`.
pub fn watch_output(
    output: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    marker: &'static str,
    log: Option<std::path::PathBuf>,
) -> (tokio::sync::oneshot::Receiver<String>, JoinHandle<()>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (found, seen) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut found = Some(found);
        let mut file = match log {
            Some(path) => Some(tokio::fs::File::create(path).await.unwrap()),
            None => None,
        };
        let mut lines = BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(file) = &mut file {
                file.write_all(format!("{line}\n").as_bytes()).await.unwrap();
                file.flush().await.unwrap();
            }
            if line.contains(marker) {
                found.take().map(|found| found.send(line));
            }
        }
    });
    (seen, task)
}

/// The test Redis as the Redis user of `role` (the Postgres role's name, or `webhook`): bin/test
/// made one per role (src/kv/acl.rs).
pub fn redis_url(role: &str) -> String {
    let user = match role {
        API_ROLE => "API",
        "webhook" => "WEBHOOK",
        _ => "WORKER",
    };
    env(&format!("BOTFLEET_TEST_REDIS_{user}_URL"))
}

/// A Redis client for a URL of the test Redis (TLS in bin/test's TLS mode, a Redis Cluster in
/// its cluster mode).
pub fn redis_client(url: &str) -> botfleet::kv::Client {
    let url = botfleet::settings::Secret::new(url);
    botfleet::kv::Client::open(&url).unwrap_or_else(|e| panic!("a redis client for {url:?}: {e:#}"))
}

/// A connection to a Redis URL of the tests.
pub async fn redis_at(url: &str) -> botfleet::kv::Conn {
    redis_client(url).connect(std::time::Duration::from_secs(10)).await.unwrap()
}

/// A connection to the test Redis, as its default user (allowed everything).
pub async fn redis() -> botfleet::kv::Conn {
    redis_at(&env("BOTFLEET_TEST_REDIS_URL")).await
}

/// A URL with another user, password or database (the TLS parameters kept).
pub fn with(url: &str, user: Option<(&str, &str)>, database: Option<&str>) -> String {
    let mut url = Url::parse(url).unwrap();
    if let Some((name, password)) = user {
        url.set_username(name).unwrap();
        url.set_password(Some(password)).unwrap();
    }
    if let Some(database) = database {
        url.set_path(database);
    }
    url.to_string()
}

/// What most feed tests stand on: a fresh database, a worker (replying to a fake Telegram) and
/// an API node sharing a Redis prefix.
pub struct Stack {
    pub db: TestDb,
    pub prefix: String,
    pub worker: Running,
    pub api: Running,
}

impl Stack {
    /// The API node reads the replica when `replica`.
    pub async fn start(replica: bool) -> Self {
        let db = TestDb::fresh().await;
        let prefix = unique("r");
        let (_fake, telegram) = spawn_fake(false).await;
        let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
        let api = spawn_api(&db, &prefix, replica).await;
        Self { db, prefix, worker, api }
    }
}

/// A name no other test (or test process) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A database of one test, on the primary and (through streaming replication) on the replica.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A database with the whole schema and roles, cloned from the migrated template.
    pub async fn fresh() -> Self {
        let admin = connect(&env("BOTFLEET_TEST_PRIMARY_URL")).await;
        ensure_template(&admin).await;
        let name = unique("t");
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        Self { name }
    }

    /// A database with nothing in it.
    pub async fn empty() -> Self {
        let admin = connect(&env("BOTFLEET_TEST_PRIMARY_URL")).await;
        let name = unique("e");
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        Self { name }
    }

    /// URL of this database on the primary (or replica) as `role`.
    pub fn url(&self, role: &str, replica: bool) -> String {
        let base = env(if replica { "BOTFLEET_TEST_REPLICA_URL" } else { "BOTFLEET_TEST_PRIMARY_URL" });
        let mut url = Url::parse(&base).unwrap();
        url.set_username(role).unwrap();
        url.set_path(&self.name);
        url.to_string()
    }

    pub fn owner_url(&self) -> String {
        self.url("postgres", false)
    }

    pub async fn owner(&self) -> Client {
        connect(&self.owner_url()).await
    }

    /// Waits until the replica has this database, so tests can read it there.
    pub async fn wait_for_replica(&self) {
        let url = self.url("postgres", true);
        eventually(Duration::from_secs(10), "the test database on the replica", || {
            let url = url.clone();
            async move { botfleet::store::connect(&url).await.ok().map(drop) }
        })
        .await;
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.owner().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    pub fn migrate_settings(&self) -> MigrateSettings {
        MigrateSettings {
            database_url: Secret::new(self.owner_url()),
            worker_role: WORKER_ROLE.to_owned(),
            api_role: API_ROLE.to_owned(),
        }
    }
}

/// Creates the migrated template database once per server; concurrent test processes wait
/// on an advisory lock. It is built under another name and renamed when complete, so a
/// half-made template never exists under the real name.
async fn ensure_template(admin: &Client) {
    admin.execute("SELECT pg_advisory_lock(4242)", &[]).await.unwrap();
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&TEMPLATE])
        .await
        .unwrap()
        .is_some();
    if !exists {
        let building = format!("{TEMPLATE}_building");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {building}")).await.unwrap();
        admin.batch_execute(&format!("CREATE DATABASE {building}")).await.unwrap();
        let db = TestDb { name: building.clone() };
        migrations::apply(&db.migrate_settings()).await.unwrap();
        admin.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {TEMPLATE}")).await.unwrap();
    }
    admin.execute("SELECT pg_advisory_unlock(4242)", &[]).await.unwrap();
}

/// A bot of the test deployment.
#[derive(Clone)]
pub struct TestBot {
    pub name: &'static str,
    pub token: &'static str,
    pub secret: &'static str,
}

pub const MAIN_BOT: TestBot =
    TestBot { name: "main", token: "123456:TEST-token_do_not_leak", secret: "webhook_secret-1" };

impl TestBot {
    pub fn id(&self) -> i64 {
        self.token.split(':').next().unwrap().parse().unwrap()
    }

    /// The bot's id as botfleet types it.
    pub fn bot_id(&self) -> botfleet::types::BotId {
        botfleet::types::BotId(self.id())
    }

    pub fn settings(&self) -> Vec<(String, String)> {
        let upper = self.name.to_ascii_uppercase();
        vec![
            (format!("BOTFLEET_BOT_{upper}_TOKEN"), self.token.to_owned()),
            (format!("BOTFLEET_BOT_{upper}_WEBHOOK_SECRET"), self.secret.to_owned()),
        ]
    }
}

/// Logs of the processes under test go to the test's output (shown when it fails).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("botfleet=debug,info"))
        .with_test_writer()
        .try_init();
}

/// A process of the cluster running inside the test.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub stop: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

/// The fake Telegram, served on a port of its own.
pub async fn spawn_fake(enforce_limits: bool) -> (Fake, String) {
    spawn_fake_on("127.0.0.1:0", enforce_limits).await
}

/// The fake Telegram on a given address (to bring it back where a worker expects it).
pub async fn spawn_fake_on(addr: &str, enforce_limits: bool) -> (Fake, String) {
    let fake = Fake::new(enforce_limits);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = fake.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (fake, url)
}

fn base_settings(db: &TestDb, role: &str, redis_prefix: &str) -> Vec<(String, String)> {
    vec![
        (settings::LISTEN.into(), "127.0.0.1:0".into()),
        (settings::ADMIN_LISTEN.into(), "127.0.0.1:0".into()),
        (settings::DATABASE_URL.into(), db.url(role, false)),
        (settings::REDIS_URL.into(), redis_url(role)),
        (settings::REDIS_PREFIX.into(), redis_prefix.into()),
        (settings::SHUTDOWN_GRACE_SECS.into(), "5".into()),
    ]
}

/// Worker settings that keep a test to what it tests: no flood control, no webhook watcher
/// (the tests of those turn them on).
pub const QUIET: [(&str, &str); 4] = [
    (settings::FLOOD_PER_BOT, "0"),
    (settings::FLOOD_PER_CHAT, "0"),
    (settings::FLOOD_PER_GROUP, "0"),
    (settings::WEBHOOK_WATCH_SECS, "0"),
];

pub async fn spawn_worker(db: &TestDb, redis_prefix: &str, telegram_url: &str, bots: &[TestBot]) -> Running {
    spawn_worker_with(db, redis_prefix, telegram_url, bots, &[]).await
}

/// A worker with extra settings (`BOTFLEET_REDIS_URL` among them overrides the test Redis).
pub async fn spawn_worker_with(
    db: &TestDb,
    redis_prefix: &str,
    telegram_url: &str,
    bots: &[TestBot],
    extra: &[(&str, &str)],
) -> Running {
    let mut pairs = base_settings(db, WORKER_ROLE, redis_prefix);
    pairs.push((settings::TELEGRAM_API_URL.into(), telegram_url.into()));
    pairs.push((settings::BOTS.into(), bots.iter().map(|b| b.name).collect::<Vec<_>>().join(",")));
    pairs.push((settings::MAX_BODY_BYTES.into(), "65536".into()));
    pairs.extend(QUIET.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    for bot in bots {
        pairs.extend(bot.settings());
    }
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    init_logs();
    let settings = WorkerSettings::load(&Source::from_pairs(pairs)).unwrap();
    let metrics = Arc::new(Metrics::new("worker").unwrap());
    let app = botfleet::worker::build(settings, metrics.clone()).await.unwrap();
    let (addr, admin) = (app.addr().unwrap(), app.admin_addr().unwrap());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    Running { addr, admin, metrics, stop, handle }
}

/// An API node reading the replica (when `replica`) with the primary as fallback.
pub async fn spawn_api(db: &TestDb, redis_prefix: &str, replica: bool) -> Running {
    spawn_api_with(db, redis_prefix, replica, &[]).await
}

pub async fn spawn_api_with(
    db: &TestDb,
    redis_prefix: &str,
    replica: bool,
    extra: &[(&str, &str)],
) -> Running {
    let mut pairs = base_settings(db, API_ROLE, redis_prefix);
    // Tests call from loopback, as Nginx would: not limited per address unless a test says so.
    pairs.push((settings::TRUSTED_PROXIES.into(), "127.0.0.1,::1".into()));
    pairs.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    if replica {
        db.wait_for_replica().await;
        pairs.push((settings::REPLICA_URLS.into(), db.url(API_ROLE, true)));
    }
    let settings = ApiSettings::load(&Source::from_pairs(pairs)).unwrap();
    let metrics = Arc::new(Metrics::new("api").unwrap());
    let app = botfleet::api::build(settings, metrics.clone()).await.unwrap();
    let (addr, admin) = (app.addr().unwrap(), app.admin_addr().unwrap());
    let stop = CancellationToken::new();
    let handle = tokio::spawn(app.run_until_stopped(stop.clone()));
    Running { addr, admin, metrics, stop, handle }
}

/// A private text message from user `user` (who is also the chat), as Telegram sends it.
pub fn text_update(update_id: i64, user: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_790_000_000,
            "chat": { "id": user, "type": "private", "first_name": "Ada", "username": "ada" },
            "from": { "id": user, "is_bot": false, "first_name": "Ada", "username": "ada", "language_code": "en" },
            "text": text,
        }
    })
}

/// A private photo with a caption from user `user`.
pub fn photo_update(update_id: i64, user: i64, caption: &str) -> Value {
    let mut update = text_update(update_id, user, "");
    let message = update["message"].as_object_mut().unwrap();
    message.remove("text");
    message.insert("caption".into(), json!(caption));
    message.insert(
        "photo".into(),
        json!([
            { "file_id": "small-id", "file_unique_id": "small-u", "width": 90, "height": 90 },
            { "file_id": format!("photo-{update_id}"), "file_unique_id": format!("u-{update_id}"), "width": 800, "height": 600 }
        ]),
    );
    update
}

/// A press of an inline button with `data`, by `user`, under a message in `chat`.
pub fn callback_update(update_id: i64, user: i64, chat: i64, data: &str) -> Value {
    json!({
        "update_id": update_id,
        "callback_query": {
            "id": format!("cb-{update_id}"),
            "from": { "id": user, "is_bot": false, "first_name": format!("User{user}") },
            "chat_instance": "1",
            "data": data,
            "message": {
                "message_id": 500,
                "date": 1_790_000_000,
                "chat": if chat > 0 { json!({ "id": chat, "type": "private", "first_name": "Ada" }) }
                        else { json!({ "id": chat, "type": "supergroup", "title": "Moderators" }) },
                "text": "buttons",
            }
        }
    })
}

/// POSTs `body` to the worker's webhook for `bot` with `secret` (none when `None`).
pub async fn deliver(
    worker: &Running,
    bot: &TestBot,
    secret: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(worker.url(&format!("/webhook/{}", bot.name)))
        .header("content-type", "application/json")
        .body(body);
    if let Some(secret) = secret {
        request = request.header("x-telegram-bot-api-secret-token", secret);
    }
    request.send().await.unwrap()
}

/// Returns once one statement inserting posts waits for a lock (the test holds it).
pub async fn until_an_insert_waits_for_a_lock(db: &TestDb) {
    eventually(Duration::from_secs(10), "an insert waiting for a lock", || async {
        let waiting = db
            .count(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO posts%'",
            )
            .await;
        (waiting == 1).then_some(())
    })
    .await;
}

/// The texts the bot sent to `chat`, in order.
pub fn said_to(fake: &Fake, chat: i64) -> Vec<String> {
    fake.calls()
        .into_iter()
        .filter(|c| c.params["chat_id"] == json!(chat) && c.method == "sendMessage")
        .map(|c| c.params["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Delivers an update to the main bot and expects it acknowledged.
pub async fn deliver_ok(worker: &Running, update: &Value) {
    let response = deliver_update(worker, &MAIN_BOT, update).await;
    assert_eq!(response.status(), 200, "update {} was not acknowledged", update["update_id"]);
}

/// Delivers a JSON update with the bot's right secret.
pub async fn deliver_update(worker: &Running, bot: &TestBot, update: &Value) -> reqwest::Response {
    deliver(worker, bot, Some(bot.secret), update.to_string()).await
}

/// Waits until the outbox senders have delivered (or dropped) everything queued for the main
/// bot under `prefix`: entries are deleted once done, so an empty stream means every message is
/// in the fake's log.
pub async fn outbox_drained(prefix: &str) {
    let [outbox, _] = botfleet::kv::BotKeys::new(prefix, MAIN_BOT.bot_id()).outbox();
    eventually(Duration::from_secs(30), "the outbox drained", || async {
        let queued: i64 = redis::cmd("XLEN").arg(&outbox).query_async(&mut redis().await).await.ok()?;
        (queued == 0).then_some(())
    })
    .await;
}

/// Users 1000.. of the bot, plus one banned (900) and one unreachable (901).
pub async fn audience(db: &TestDb, users: i64) {
    db.owner()
        .await
        .execute(
            "INSERT INTO users (bot_id, user_id, first_name, is_banned, unreachable_at)
             SELECT $1::int8, g, 'Reader', false, NULL::timestamptz FROM generate_series(1000, 999 + $2::int8) g
             UNION ALL SELECT $1, 900, 'Banned', true, NULL
             UNION ALL SELECT $1, 901, 'Gone', false, now()",
            &[&MAIN_BOT.id(), &users],
        )
        .await
        .unwrap();
}

/// The chats a sent text reached, in the order the fake took them.
pub fn texts_to(fake: &Fake, text: &str) -> Vec<i64> {
    fake.calls()
        .iter()
        .filter(|c| c.method == "sendMessage" && c.status == 200 && c.params["text"] == text)
        .filter_map(|c| c.params["chat_id"].as_i64())
        .collect()
}
