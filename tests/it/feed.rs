//! The feed API: keyset pages with opaque cursors and a Link header, clear 4xx for bad input,
//! the page cache (single-flight, ETag, generation) and the replica-lag guard (invariant 6).

use std::time::Duration;

use serde_json::Value;

use crate::helpers::redis;
use crate::helpers::{
    MAIN_BOT, Running, Stack, TestDb, deliver_update, eventually, spawn_api, spawn_api_with, spawn_fake,
    spawn_worker, text_update, unique,
};

/// Inserts `n` published posts directly, oldest first, each a millisecond apart.
pub async fn seed_posts(db: &TestDb, n: i64) {
    db.owner()
        .await
        .batch_execute(&format!(
            "INSERT INTO users (bot_id, user_id, first_name, username) VALUES (1, 2, 'Ada', 'ada');
             INSERT INTO users (bot_id, user_id, first_name, is_banned) VALUES (1, 3, 'Mallory', true);
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, published_at)
             SELECT 1, 2, 2, g, 'u:' || g, 'post number ' || g,
                    now() - interval '1 hour' + g * interval '1 millisecond'
             FROM generate_series(1, {n}) g;
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, published_at)
             VALUES (1, 3, 3, 100000, 'u:100000', 'banned author post', now());
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, status)
             VALUES (1, 2, 2, 100001, 'u:100001', 'still pending post', 'pending');"
        ))
        .await
        .unwrap();
}

/// A fresh database with `n` seeded posts, and an API node reading it (the replica when
/// `replica`) under its own Redis prefix.
pub struct Seeded {
    pub db: TestDb,
    pub prefix: String,
    pub api: Running,
}

pub async fn seeded_api(n: i64, replica: bool) -> Seeded {
    let db = TestDb::fresh().await;
    seed_posts(&db, n).await;
    let prefix = unique("r");
    let api = spawn_api(&db, &prefix, replica).await;
    Seeded { db, prefix, api }
}

#[tokio::test]
async fn feed_walks_every_post_newest_first_by_cursor() {
    let Seeded { api, .. } = seeded_api(45, false).await;
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let mut url = api.url("/api/feed?limit=20");
    let mut pages = 0;
    loop {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let link = response.headers().get("link").map(|v| v.to_str().unwrap().to_owned());
        let page: Value = response.json().await.unwrap();
        pages += 1;
        for post in page["posts"].as_array().unwrap() {
            seen.push(post["text"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                let link = link.expect("a page with a next cursor must have a Link header");
                assert!(link.contains(cursor) && link.ends_with("rel=\"next\""), "{link}");
                url = api.url(&format!("/api/feed?limit=20&cursor={cursor}"));
            }
            None => {
                assert!(link.is_none(), "the last page must not link onwards");
                break;
            }
        }
    }
    let expected: Vec<String> = (1..=45).rev().map(|n| format!("post number {n}")).collect();
    assert_eq!(seen, expected, "every public post once, newest first; no banned or pending ones");
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn feed_rejects_bad_limits_and_cursors_with_json_errors() {
    let db = TestDb::fresh().await;
    let api = spawn_api(&db, &unique("r"), false).await;
    for query in ["limit=0", "limit=101", "limit=-1", "limit=ten", "cursor=garbage", "cursor=djEuMS4y%21"] {
        let response = reqwest::get(api.url(&format!("/api/feed?{query}"))).await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    for (path, status) in
        [("/api/posts/999", 404), ("/api/posts/abc", 400), ("/api/nothing", 404), ("/etc/passwd", 404)]
    {
        let response = reqwest::get(api.url(path)).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}

#[tokio::test]
async fn a_burst_of_cold_requests_for_one_page_costs_one_query() {
    let Seeded { api, .. } = seeded_api(30, false).await;
    let client = reqwest::Client::new();
    let burst = (0..100).map(|_| {
        let client = client.clone();
        let url = api.url("/api/feed?limit=20");
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    });
    let bodies = futures_util::future::join_all(burst).await;
    assert!(bodies.iter().all(|b| *b == bodies[0]), "every request must get the same page");
    let queries: u64 =
        ["replica", "primary"].iter().map(|s| api.metrics.feed_reads.with_label_values(&[s]).get()).sum();
    assert_eq!(queries, 1, "100 identical cold requests must cost one database query");
    assert_eq!(api.metrics.page_cache.with_label_values(&["miss"]).get(), 1);
}

#[tokio::test]
async fn pages_carry_an_etag_and_answer_304_when_unchanged() {
    let Seeded { api, .. } = seeded_api(3, false).await;
    let first = reqwest::get(api.url("/api/feed")).await.unwrap();
    assert_eq!(first.headers()["cache-control"], "public, max-age=1");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    let again =
        reqwest::Client::new().get(api.url("/api/feed")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
    assert!(again.bytes().await.unwrap().is_empty());
    let other = reqwest::Client::new()
        .get(api.url("/api/feed"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
}

#[tokio::test]
async fn a_new_post_is_on_page_one_at_once_although_the_page_was_cached() {
    let Stack { worker, api, .. } = &Stack::start(true).await;
    deliver_update(worker, &MAIN_BOT, &text_update(1, 42, "the first post of the feed")).await;
    let page = |api: &crate::helpers::Running| reqwest::get(api.url("/api/feed"));
    eventually(Duration::from_secs(1), "the first post on page 1", || async {
        let feed: Value = page(api).await.ok()?.json().await.ok()?;
        (feed["posts"].as_array()?.len() == 1).then_some(())
    })
    .await;
    // Page 1 is now cached, in the process and in Redis.
    let _: Value = page(api).await.unwrap().json().await.unwrap();
    assert!(api.metrics.page_cache.with_label_values(&["local_hit"]).get() >= 1);
    deliver_update(worker, &MAIN_BOT, &text_update(2, 42, "the second post of the feed")).await;
    eventually(Duration::from_secs(1), "the new post on page 1", || async {
        let feed: Value = page(api).await.ok()?.json().await.ok()?;
        (feed["posts"][0]["text"] == "the second post of the feed").then_some(())
    })
    .await;
}

#[tokio::test]
async fn busy_requests_share_their_reads_of_the_feed_state_yet_see_each_post_at_once() {
    let Stack { worker, api, .. } = &Stack::start(false).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lanes: Vec<_> = (0..32)
        .map(|_| {
            let (url, stop) = (api.url("/api/feed?limit=1"), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for n in 1..=20 {
        let text = format!("post {n} of a busy feed");
        assert_eq!(deliver_update(worker, &MAIN_BOT, &text_update(n, 42, &text)).await.status(), 200);
        // Right after the publish's answer, with reads of the state in flight all the time.
        let page: Value = reqwest::get(api.url("/api/feed?limit=1")).await.unwrap().json().await.unwrap();
        assert_eq!(page["posts"][0]["text"], text.as_str(), "page 1 must have the post at once");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for lane in lanes {
        lane.await.unwrap();
    }
    let requests = api.metrics.api_requests.with_label_values(&["/api/feed", "200"]).get();
    let reads = api.metrics.feed_state_reads.get();
    assert!(reads < requests, "{reads} reads of the state for {requests} requests: none shared");
}

#[tokio::test]
async fn a_replica_behind_the_last_publish_is_skipped_for_the_primary() {
    let db = TestDb::fresh().await;
    seed_posts(&db, 2).await;
    // A database without the posts stands in for a replica that has not replayed them yet.
    let stale = TestDb::fresh().await;
    let prefix = unique("r");
    let position: i64 = db.count("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").await;
    let mut conn = crate::helpers::redis().await;
    let () = redis::cmd("SET")
        .arg(botfleet::kv::FeedKeys::new(&prefix).wal_position)
        .arg(position)
        .query_async(&mut conn)
        .await
        .unwrap();
    let replica = stale.url(crate::helpers::API_ROLE, false);
    let api = spawn_api_with(&db, &prefix, false, &[("BOTFLEET_REPLICA_URLS", replica.as_str())]).await;
    let feed: Value = reqwest::get(api.url("/api/feed")).await.unwrap().json().await.unwrap();
    assert_eq!(feed["posts"].as_array().unwrap().len(), 2, "the page must come from the primary");
    assert_eq!(api.metrics.replica_lagging.get(), 1);
    assert_eq!(api.metrics.feed_reads.with_label_values(&["replica"]).get(), 0);
    assert_eq!(api.metrics.feed_reads.with_label_values(&["primary"]).get(), 1);
}

#[tokio::test]
async fn old_clients_page_numbers_work_but_only_near_the_top() {
    let Seeded { api, .. } = seeded_api(25, false).await;
    let page2: Value =
        reqwest::get(api.url("/api/feed?limit=10&page=2")).await.unwrap().json().await.unwrap();
    let texts: Vec<&str> =
        page2["posts"].as_array().unwrap().iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert_eq!(texts.first(), Some(&"post number 15"));
    assert_eq!(texts.len(), 10);
    for query in ["page=0", "page=-1", "page=x", "limit=100&page=11", "page=2&cursor=abc"] {
        let response = reqwest::get(api.url(&format!("/api/feed?{query}"))).await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
    }
}

#[tokio::test]
async fn cors_answers_configured_origins_only() {
    let db = TestDb::fresh().await;
    let api =
        spawn_api_with(&db, &unique("r"), false, &[("BOTFLEET_CORS_ORIGINS", "https://feed.example.org")])
            .await;
    let client = reqwest::Client::new();
    let allowed =
        client.get(api.url("/api/feed")).header("origin", "https://feed.example.org").send().await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://feed.example.org");
    assert_eq!(allowed.headers()["vary"], "Origin");
    let other =
        client.get(api.url("/api/feed")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Every answer varies by Origin, so a shared cache never hands one origin's answer to another.
    assert_eq!(other.headers()["vary"], "Origin");
    assert_eq!(client.get(api.url("/api/feed")).send().await.unwrap().headers()["vary"], "Origin");
    let preflight = client
        .request(reqwest::Method::OPTIONS, api.url("/api/feed"))
        .header("origin", "https://feed.example.org")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(preflight.headers()["access-control-allow-methods"].to_str().unwrap().contains("GET"));
}

#[tokio::test]
async fn the_live_page_is_served_and_shows_user_text_as_text() {
    let db = TestDb::fresh().await;
    let api = spawn_api(&db, &unique("r"), false).await;
    let response = reqwest::get(api.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    let html = response.text().await.unwrap();
    assert!(html.contains("new EventSource(\"/api/feed/stream\")"));
    assert!(html.contains("textContent = post.text"));
    for unsafe_sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"] {
        assert!(!html.contains(unsafe_sink), "the page must never parse user text as HTML ({unsafe_sink})");
    }
}

#[tokio::test]
async fn a_dead_replica_leaves_the_feed_served_and_readiness_degraded() {
    let db = TestDb::fresh().await;
    seed_posts(&db, 1).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dead = format!("postgres://botfleet_api@127.0.0.1:{port}/nowhere");
    let api = spawn_api_with(&db, &unique("r"), false, &[("BOTFLEET_REPLICA_URLS", dead.as_str())]).await;
    let feed: Value = reqwest::get(api.url("/api/feed")).await.unwrap().json().await.unwrap();
    assert_eq!(feed["posts"].as_array().unwrap().len(), 1, "the primary must serve");
    let ready = reqwest::get(api.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "a node without its replica can still serve");
    assert_eq!(ready.text().await.unwrap(), "postgres: degraded\nredis: ok\n");
    eventually(Duration::from_secs(5), "the dead replica to be measured", || async {
        let metrics = reqwest::get(api.admin_url("/metrics")).await.ok()?.text().await.ok()?;
        metrics.contains("botfleet_replica_up{replica=\"1\"} 0").then_some(())
    })
    .await;
}

#[tokio::test]
async fn replica_lag_is_measured() {
    let db = TestDb::fresh().await;
    let api = spawn_api(&db, &unique("r"), true).await;
    eventually(Duration::from_secs(5), "the replica's lag to be measured", || async {
        (api.metrics.replica_up.with_label_values(&["1"]).get() == 1).then_some(())
    })
    .await;
    let lag = api.metrics.replica_lag_seconds.with_label_values(&["1"]).get();
    assert!((0.0..60.0).contains(&lag), "a live replica on loopback lags little, got {lag} s");
}

/// A photo post as a user would have sent it (Telegram knows the file), through a worker, and an
/// API node that serves the bot's media.
struct PhotoPost {
    db: TestDb,
    prefix: String,
    fake: botfleet::fake_telegram::Fake,
    worker: crate::helpers::Running,
    api: crate::helpers::Running,
    /// A second node, sharing the first one's Redis.
    other_api: crate::helpers::Running,
    file_id: String,
}

/// A separate cache Redis (bin/test: database 1 of the test Redis, or a Redis of its own beside
/// a Redis Cluster), as the API node's user: what goes where shows.
fn cache_redis_url() -> String {
    crate::helpers::env("BOTFLEET_TEST_CACHE_REDIS_URL")
}

async fn cache_redis() -> botfleet::kv::Conn {
    crate::helpers::redis_at(&cache_redis_url()).await
}

async fn photo_post(bytes: &[u8]) -> PhotoPost {
    use teloxide_core::prelude::Requester;
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (fake, telegram) = spawn_fake(false).await;
    let bot = teloxide_core::Bot::new(MAIN_BOT.token).set_api_url(telegram.parse().unwrap());
    let upload = teloxide_core::types::InputFile::memory(bytes.to_vec()).file_name("p.jpg");
    let sent = bot.send_photo(teloxide_core::types::ChatId(42), upload).await.unwrap();
    let file_id = sent.photo().unwrap()[0].file.id.0.clone();
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let mut update = crate::helpers::photo_update(1, 42, "a photo through the proxy");
    update["message"]["photo"][1]["file_id"] = serde_json::json!(file_id);
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &update).await.status(), 200);
    let cache = cache_redis_url();
    let settings = [
        ("BOTFLEET_BOTS", "main"),
        ("BOTFLEET_BOT_MAIN_TOKEN", MAIN_BOT.token),
        ("BOTFLEET_BOT_MAIN_WEBHOOK_SECRET", MAIN_BOT.secret),
        ("BOTFLEET_TELEGRAM_API_URL", telegram.as_str()),
        ("BOTFLEET_CACHE_REDIS_URL", cache.as_str()),
    ];
    let api = spawn_api_with(&db, &prefix, false, &settings).await;
    let other_api = spawn_api_with(&db, &prefix, false, &settings).await;
    PhotoPost { db, prefix, fake, worker, api, other_api, file_id }
}

#[tokio::test]
async fn media_is_proxied_without_the_token_reaching_the_browser_and_asks_telegram_once_a_file() {
    let PhotoPost { db, prefix, fake, worker, api, other_api, file_id } =
        photo_post(b"\xff\xd8 jpeg bytes").await;
    deliver_update(&worker, &MAIN_BOT, &text_update(2, 42, "a post without any photo")).await;
    let with_photo: i64 = db.count("SELECT id FROM posts WHERE media_file_id IS NOT NULL").await;
    let without: i64 = db.count("SELECT id FROM posts WHERE media_file_id IS NULL").await;
    let feed = reqwest::get(api.url("/api/feed")).await.unwrap().text().await.unwrap();
    assert!(
        !feed.contains(MAIN_BOT.token) && !feed.contains(&file_id),
        "the feed must not expose files or tokens"
    );
    let media_url = api.url(&format!("/api/media/{with_photo}"));
    let media = reqwest::get(&media_url).await.unwrap();
    assert_eq!(media.status(), 200);
    // Kept for a second only: the post may leave the feed, and its photo with it.
    assert_eq!(media.headers()["cache-control"], "public, max-age=1");
    assert!(media.headers().contains_key("x-accel-expires"), "Nginx keeps it as it keeps a feed page");
    let etag = media.headers()["etag"].to_str().unwrap().to_owned();
    let headers = format!("{:?}", media.headers());
    assert_eq!(media.bytes().await.unwrap().as_ref(), b"\xff\xd8 jpeg bytes");
    assert!(!headers.contains(MAIN_BOT.token), "the token leaked into the media response's headers");
    assert_eq!(reqwest::get(api.url(&format!("/api/media/{without}"))).await.unwrap().status(), 404);
    assert_eq!(reqwest::get(api.url("/api/media/x")).await.unwrap().status(), 400);
    let get_files = || fake.calls().iter().filter(|c| c.method == "getFile").count();
    let client = reqwest::Client::new();
    let revalidate = || async {
        let asked = get_files();
        let answer = client.get(&media_url).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(get_files(), asked, "a photo the browser has is confirmed without Telegram");
        answer
    };
    let unchanged = revalidate().await;
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()["etag"], etag.as_str());
    // Query strings that would bust a cache, twenty requests at once on two nodes after the path
    // was forgotten (it is in the cache Redis): one getFile (the path is then kept an hour, for
    // every node).
    let path = botfleet::kv::BotKeys::new(&prefix, MAIN_BOT.bot_id()).media_path(&etag.replace('"', ""));
    let () = redis::cmd("DEL").arg(&path).query_async(&mut cache_redis().await).await.unwrap();
    let node = |n: usize| if n.is_multiple_of(2) { &api } else { &other_api };
    let busting = (0..20).map(|n| reqwest::get(node(n).url(&format!("/api/media/{with_photo}?n={n}"))));
    for answer in futures_util::future::join_all(busting).await {
        assert_eq!(answer.unwrap().status(), 200);
    }
    assert_eq!(get_files(), 2, "one getFile more for the file, whatever the requests and nodes");

    // While Telegram has the bot wait after a 429 (met by any process: its pause is in the state
    // Redis), the proxy asks nothing.
    let pause = botfleet::kv::BotKeys::new(&prefix, MAIN_BOT.bot_id()).flood_pause();
    let () = redis::cmd("SET")
        .arg(&pause)
        .arg(1)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis().await)
        .await
        .unwrap();
    let asked = get_files();
    assert_eq!(reqwest::get(&media_url).await.unwrap().status(), 200, "its path is known: no call needed");
    let () = redis::cmd("DEL").arg(&path).query_async(&mut cache_redis().await).await.unwrap();
    let media = reqwest::get(&media_url).await.unwrap();
    assert_eq!(media.status(), 503);
    assert!(media.headers().contains_key("retry-after"));
    assert_eq!(get_files(), asked, "no getFile during the pause");
    assert_eq!(revalidate().await.status(), 304, "confirming a photo needs no Telegram");

    // Its author banned, the photo is gone too, for a browser that has it as for one that has not.
    let ban = "UPDATE users SET is_banned = true WHERE user_id = (SELECT author_id FROM posts WHERE id = $1)";
    db.owner().await.execute(ban, &[&with_photo]).await.unwrap();
    assert_eq!(revalidate().await.status(), 404);
    assert_eq!(reqwest::get(&media_url).await.unwrap().status(), 404);
}

#[tokio::test]
async fn a_429_on_the_media_proxy_pauses_media_only_never_the_bots_replies() {
    let PhotoPost { db, fake, worker, api, .. } = photo_post(b"bytes").await;
    let id: i64 = db.count("SELECT id FROM posts").await;
    fake.fail_next("getFile", botfleet::fake_telegram::Failure::TooManyRequests(60));
    let media = reqwest::get(api.url(&format!("/api/media/{id}"))).await.unwrap();
    assert_eq!(media.status(), 503);
    let again = reqwest::get(api.url(&format!("/api/media/{id}"))).await.unwrap();
    assert_eq!(again.status(), 503, "media waits out its own pause");
    assert_eq!(fake.calls().iter().filter(|c| c.method == "getFile").count(), 1);
    // The bot's replies do not wait at all.
    let started = std::time::Instant::now();
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &text_update(2, 42, "/help")).await.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(5), "the reply waited {:?}", started.elapsed());
    let replies = fake.calls().iter().filter(|c| c.method == "sendMessage" && c.status == 200).count();
    assert_eq!(replies, 2, "the post's reply and /help's");
}

/// Resumes WAL replay on the shared test replica when dropped, even if the test fails.
struct ReplayPaused;

impl ReplayPaused {
    /// Pauses WAL replay on the shared test replica (keep it short: other tests share it), and
    /// returns once it has paused.
    async fn start() -> Self {
        let replica = crate::helpers::connect(&crate::helpers::env("BOTFLEET_TEST_REPLICA_URL")).await;
        replica.execute("SELECT pg_wal_replay_pause()", &[]).await.unwrap();
        let paused = ReplayPaused;
        eventually(Duration::from_secs(5), "the replica's replay to pause", || async {
            let state: String =
                replica.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await.ok()?.get(0);
            (state == "paused").then_some(())
        })
        .await;
        paused
    }
}

impl Drop for ReplayPaused {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .arg(crate::helpers::env("BOTFLEET_TEST_REPLICA_URL"))
            .args(["-XAtqc", "SELECT pg_wal_replay_resume()"])
            .output();
    }
}

#[tokio::test]
async fn a_paused_replica_is_skipped_and_no_stale_page_is_cached() {
    let Stack { db, worker, api, .. } = &Stack::start(true).await;
    let first_page = || async {
        let feed: Value = reqwest::get(api.url("/api/feed")).await.ok()?.json().await.ok()?;
        feed["posts"][0]["text"].as_str().map(str::to_owned)
    };
    deliver_update(worker, &MAIN_BOT, &text_update(1, 42, "replayed everywhere already")).await;
    // The nodes' first connections are made meanwhile (TLS handshakes in bin/test's TLS mode).
    eventually(Duration::from_secs(5), "the first post on page 1", || async {
        (first_page().await? == "replayed everywhere already").then_some(())
    })
    .await;

    // The replica stops replaying.
    let paused = ReplayPaused::start().await;
    deliver_update(worker, &MAIN_BOT, &text_update(2, 42, "published while the replica is paused")).await;
    eventually(Duration::from_secs(1), "the new post on page 1 despite the paused replica", || async {
        (first_page().await? == "published while the replica is paused").then_some(())
    })
    .await;
    assert!(api.metrics.replica_lagging.get() >= 1, "the lagging replica must have been skipped");
    drop(paused);

    // Replay resumes: page 1 never goes back to the stale version.
    let on_replica = crate::helpers::connect(&db.url("postgres", true)).await;
    eventually(Duration::from_secs(5), "the replica to catch up", || async {
        let n: i64 = on_replica.query_one("SELECT count(*) FROM posts", &[]).await.ok()?.get(0);
        (n == 2).then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(first_page().await.as_deref(), Some("published while the replica is paused"));
    }
}

#[tokio::test]
async fn a_replica_with_a_later_id_but_not_an_earlier_commit_is_not_read() {
    // Ids are taken at insert and commits land in either order: post B, the higher id, can be on
    // a replica while post A, the lower id committed later, is not. Only the WAL position after
    // the publish's commit tells such a replica from a current one.
    let Seeded { db, prefix, api } = seeded_api(1, true).await;
    let insert = |update_id: i64, text: &str| {
        format!(
            "INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, published_at)
             VALUES (1, 2, 2, {update_id}, 'u:{update_id}', '{text}', now())"
        )
    };
    let late = db.owner().await;
    late.batch_execute(&format!("BEGIN; {}", insert(5001, "post A, committed last"))).await.unwrap();
    db.owner().await.batch_execute(&insert(5002, "post B, committed first")).await.unwrap();
    let on_replica = crate::helpers::connect(&db.url("postgres", true)).await;
    eventually(Duration::from_secs(5), "post B on the replica", || async {
        let n: i64 = on_replica
            .query_one("SELECT count(*) FROM posts WHERE text LIKE 'post B%'", &[])
            .await
            .ok()?
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    // The replica stops replaying (kept short: other tests share it); then A commits.
    let paused = ReplayPaused::start().await;
    late.batch_execute("COMMIT").await.unwrap();
    // Both are published as a worker publishes them: with the WAL position after their commits.
    let rows = db
        .owner()
        .await
        .query("SELECT id, text FROM posts WHERE text LIKE 'post _,%' ORDER BY id", &[])
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
    assert!(rows[0].get::<_, String>(1).starts_with("post A"), "A took the lower id: {ids:?}");
    let position: i64 = db.count("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").await;
    let view = |id: i64| botfleet::feed::PostView {
        id: botfleet::types::PostId(id),
        bot_id: botfleet::types::BotId(1),
        text: String::new(),
        has_media: false,
        published_at: chrono::Utc::now(),
        author: botfleet::feed::Author { first_name: "Ada".into(), username: None },
    };
    let keys = botfleet::kv::FeedKeys::new(&prefix);
    let posts = [view(ids[1]), view(ids[0])];
    botfleet::feed::publish::publish(&mut redis().await, &keys, &posts, 100, position).await.unwrap();

    let feed: Value = reqwest::get(api.url("/api/feed")).await.unwrap().json().await.unwrap();
    let texts: Vec<&str> =
        feed["posts"].as_array().unwrap().iter().map(|p| p["text"].as_str().unwrap()).collect();
    assert!(texts.contains(&"post A, committed last"), "page 1 must have A: {texts:?}");
    assert!(api.metrics.replica_lagging.get() >= 1, "the replica without A must have been skipped");
    drop(paused);
}

#[tokio::test]
async fn after_redis_loses_the_feed_no_page_from_before_comes_back_and_no_lagging_replica_is_read() {
    let Seeded { db, prefix, api } = seeded_api(3, true).await;
    db.wait_for_replica().await;
    let page_one = || async {
        let feed: Value = reqwest::get(api.url("/api/feed")).await.unwrap().json().await.unwrap();
        let texts = feed["posts"].as_array().unwrap().iter().map(|p| p["text"].as_str().unwrap().to_owned());
        texts.collect::<Vec<_>>()
    };
    assert!(page_one().await.contains(&"post number 3".to_owned()), "cached with post 3");
    // Post 3 is deleted, and the feed told (as the bot's delete does).
    let keys = botfleet::kv::FeedKeys::new(&prefix);
    db.owner().await.batch_execute("DELETE FROM posts WHERE text = 'post number 3'").await.unwrap();
    let position: i64 = db.count("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint").await;
    botfleet::feed::publish::invalidate(&mut redis().await, &keys, position).await.unwrap();
    assert!(!page_one().await.contains(&"post number 3".to_owned()));
    // The replica stops replaying; post 2 is deleted on the primary only; then Redis loses
    // everything of the feed, as a restart without its data would.
    let paused = ReplayPaused::start().await;
    db.owner().await.batch_execute("DELETE FROM posts WHERE text = 'post number 2'").await.unwrap();
    let mut conn = redis().await;
    let () = redis::cmd("DEL")
        .arg(&[&keys.generation, &keys.removals, &keys.wal_position, &keys.stream])
        .query_async(&mut conn)
        .await
        .unwrap();
    let page = page_one().await;
    assert!(
        !page.contains(&"post number 3".to_owned()),
        "the page cached before the delete came back: {page:?}"
    );
    assert!(!page.contains(&"post number 2".to_owned()), "read from the lagging replica: {page:?}");
    drop(paused);
}

#[tokio::test]
async fn pages_after_a_cursor_stay_cached_while_posts_arrive_but_not_after_a_removal() {
    let Seeded { prefix, api, .. } = seeded_api(30, false).await;
    let first: Value = reqwest::get(api.url("/api/feed?limit=10")).await.unwrap().json().await.unwrap();
    let second = api.url(&format!("/api/feed?limit=10&cursor={}", first["next_cursor"].as_str().unwrap()));
    let misses = || api.metrics.page_cache.with_label_values(&["miss"]).get();
    reqwest::get(&second).await.unwrap();
    assert_eq!(misses(), 2);
    let mut conn = crate::helpers::redis().await;
    let keys = botfleet::kv::FeedKeys::new(&prefix);
    // A new post (the generation moves): page 1 is reloaded, the page after the cursor is not.
    let () = redis::cmd("INCR").arg(&keys.generation).query_async::<i64>(&mut conn).await.map(drop).unwrap();
    reqwest::get(api.url("/api/feed?limit=10")).await.unwrap();
    reqwest::get(&second).await.unwrap();
    assert_eq!(misses(), 3, "only page 1 must be reloaded after a new post");
    // A removal: every page is reloaded.
    let _: i64 = botfleet::kv::scripts::FEED_REMOVED
        .key(&keys.generation)
        .key(&keys.removals)
        .key(&keys.wal_position)
        .arg(0)
        .invoke_async(&mut conn)
        .await
        .unwrap();
    reqwest::get(&second).await.unwrap();
    assert_eq!(misses(), 4, "a removal must reload the pages after a cursor too");
    // Single posts are cached the same way, and a missing one is never cached.
    let id = first["posts"][0]["id"].as_i64().unwrap();
    for _ in 0..2 {
        assert_eq!(reqwest::get(api.url(&format!("/api/posts/{id}"))).await.unwrap().status(), 200);
        assert_eq!(reqwest::get(api.url("/api/posts/999999")).await.unwrap().status(), 404);
    }
    assert_eq!(misses(), 7, "one miss for the post, one per request for the missing one");
}
