//! Hostile input against the webhook and the API, each with the answer SECURITY.md documents:
//! a clear status, a JSON error that leaks nothing, nothing written, and the process still
//! serving the next honest request.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use botfleet::feed::cache::{MAX_REDIS_PAGE, REDIS_SLOTS};
use botfleet::settings;
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::feed::{Seeded, seed_posts, seeded_api};
use crate::helpers::{
    MAIN_BOT, Running, Stack, TestDb, deliver, deliver_update, eventually, redis, spawn_api_with, spawn_fake,
    spawn_worker, text_update, unique,
};

#[tokio::test]
async fn the_webhook_refuses_hostile_bodies_and_secrets_and_keeps_serving() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let honest = text_update(1, 42, "an honest post after all that");

    // Secrets: overlong, the right one with more after it, the right one's prefix → 401.
    let overlong = "s".repeat(10_000);
    let longer = format!("{}x", MAIN_BOT.secret);
    let prefix = &MAIN_BOT.secret[..MAIN_BOT.secret.len() - 1];
    for secret in [overlong.as_str(), longer.as_str(), prefix] {
        let response = deliver(&worker, &MAIN_BOT, Some(secret), honest.to_string()).await;
        assert_eq!(response.status(), 401, "secret of {} bytes", secret.len());
    }
    // Whatever an authenticated body holds that cannot be handled as what it is, it is kept whole
    // as a dead letter and acknowledged (a 4xx would have Telegram redeliver it for a day):
    // deeply nested JSON (within the size limit), with no stack overflow; a body that makes
    // teloxide's parser panic (found by the fuzz target), not a dropped connection; ids out of
    // Telegram's ranges; a known kind whose content no Telegram update can have.
    let nested = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let nested_object =
        format!(r#"{{"update_id": 5, "message": {}1{}}}"#, r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let reaction = r#"{"update_id":1,"message_reaction":{"chat":{"id":1,"type":"private","first_name":"A"},"message_id":1,"date":1700000000,"old_reaction":[],"new_reaction":[]}}"#;
    let mut bodies = vec![nested, nested_object, reaction.to_owned()];
    for update_id in [json!(-1), json!(1u64 << 40), json!("7"), json!(1.5)] {
        let mut update = text_update(2, 42, "a post with a strange update id");
        update["update_id"] = update_id;
        bodies.push(update.to_string());
    }
    let mut huge_chat = text_update(3, 42, "a post from a chat id past i64");
    huge_chat["message"]["chat"]["id"] = json!(u64::MAX);
    bodies.push(huge_chat.to_string());
    for body in &bodies {
        let response = deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), body.clone()).await;
        assert_eq!(response.status(), 200, "{}…", &body[..body.len().min(80)]);
    }
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, bodies.len() as i64, "each kept");
    assert_eq!(worker.metrics.updates_ignored.with_label_values(&["main", "unknown"]).get(), 0);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0, "nothing hostile was written");

    // Unknown fields inside a known kind are ignored; the update is handled as usual.
    let mut extended = text_update(4, 43, "a post with fields Telegram may add one day");
    extended["message"]["a_future_field"] = json!({"nested": [1, 2, 3]});
    extended["a_future_top_level_field"] = json!(true);
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &extended).await.status(), 200);

    // SQL, HTML and control characters are text: stored and served exactly as sent.
    let texts = [
        "'); DROP TABLE posts; -- and a little more text",
        "<script>alert('x')</script><img src=x onerror=alert(1)>",
        "bell \u{7} escape \u{1b}[31m tab \t and a right-to-left \u{202e} mark",
    ];
    for (n, text) in texts.iter().enumerate() {
        let update = text_update(10 + n as i64, 44 + n as i64, text);
        assert_eq!(deliver_update(&worker, &MAIN_BOT, &update).await.status(), 200, "{text:?}");
    }
    let stored: Vec<String> = db
        .owner()
        .await
        .query("SELECT text FROM posts WHERE update_id >= 10 ORDER BY update_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, texts, "stored verbatim, and the posts table is still there");

    // And the worker still serves an honest update.
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &honest).await.status(), 200);
}

#[tokio::test]
async fn the_api_refuses_hostile_requests_with_json_errors_that_leak_nothing() {
    let stack = Stack::start(false).await;
    let api = &stack.api;
    let long_cursor = format!("/api/feed?cursor={}", "A".repeat(20_000));
    let long_query = format!("/api/feed?limit=20&{}", "x=1&".repeat(5_000));
    for (path, status) in [
        ("/api/feed?page=-1", 400),
        ("/api/feed?page=99999999999999999999999", 400),
        ("/api/feed?limit=20&limit=21", 400),
        (long_cursor.as_str(), 400),
        ("/api/posts/-1", 404),
        ("/api/posts/99999999999999999999999", 400),
        ("/api/media/..%2F..%2Fetc%2Fpasswd", 400),
        ("/api/feed/%00", 404),
        ("/api/posts/1%27%20OR%20%271%27=%271", 400),
    ] {
        let response = reqwest::get(api.url(path)).await.unwrap();
        assert_eq!(response.status(), status, "{}", &path[..path.len().min(80)]);
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_else(|| panic!("no JSON error for {path}: {body}"));
        for leak in ["postgres", "redis", "panicked", "src/", "SELECT", MAIN_BOT.token] {
            assert!(!error.contains(leak), "{path}: the error leaks {leak:?}: {error}");
        }
    }
    // A very long query string of unknown parameters is ignored, not an error.
    assert_eq!(reqwest::get(api.url(&long_query)).await.unwrap().status(), 200);
    // The node still serves the feed.
    assert_eq!(reqwest::get(api.url("/api/feed")).await.unwrap().status(), 200);
}

/// An API node reached directly, limiting every client address (no trusted proxy), with `extra`.
async fn exposed_api(db: &TestDb, prefix: &str, extra: &[(&str, &str)]) -> Running {
    let mut settings = vec![(settings::TRUSTED_PROXIES, "")];
    settings.extend_from_slice(extra);
    spawn_api_with(db, prefix, false, &settings).await
}

/// A client whose requests come from `from` (any loopback address works on Linux).
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(from.parse::<IpAddr>().unwrap()).build().unwrap()
}

fn limited(api: &Running, limit: &str) -> u64 {
    api.metrics.limited.with_label_values(&[limit]).get()
}

/// The page cache's keys in Redis, and the bytes they hold.
async fn page_keys(prefix: &str) -> (usize, usize) {
    let mut redis = redis().await;
    let keys: Vec<String> = redis.keys(format!("{prefix}:feed:page:*")).await.unwrap();
    let mut bytes = 0;
    for key in &keys {
        let len: usize = redis.strlen(key).await.unwrap();
        assert!(len <= MAX_REDIS_PAGE, "{key} holds {len} bytes");
        bytes += len;
    }
    (keys.len(), bytes)
}

#[tokio::test]
async fn forged_cursors_get_400_and_cost_neither_a_query_nor_a_redis_key() {
    let Seeded { prefix, api, .. } = seeded_api(30, false).await;
    let page: Value = reqwest::get(api.url("/api/feed?limit=10")).await.unwrap().json().await.unwrap();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (raw, tag) = cursor.split_once('.').unwrap();
    let position = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).unwrap()).unwrap();
    let (keys_before, _) = page_keys(&prefix).await;
    let misses_before = api.metrics.page_cache.with_label_values(&["miss"]).get();
    let client = reqwest::Client::new();
    // Positions anywhere, each with the tag of another position, or made up, or unsigned (v1).
    for n in 0..500 {
        let forged_position = URL_SAFE_NO_PAD.encode(position.replace(".", &format!(".{n}")));
        let made_up_tag = URL_SAFE_NO_PAD.encode(format!("tag{n:013}"));
        let v1 = URL_SAFE_NO_PAD.encode(format!("v1.{}.{n}", 1_790_000_000_000_000i64 + n));
        for forged in [format!("{forged_position}.{tag}"), format!("{raw}.{made_up_tag}"), v1] {
            let response = client.get(api.url(&format!("/api/feed?cursor={forged}"))).send().await.unwrap();
            assert_eq!(response.status(), 400, "{forged}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "invalid cursor");
        }
    }
    assert_eq!(page_keys(&prefix).await.0, keys_before, "a forged cursor must not make a Redis key");
    let misses = api.metrics.page_cache.with_label_values(&["miss"]).get();
    assert_eq!(misses, misses_before, "a forged cursor must not cost a query");
    // The real cursor still works.
    let next = client.get(api.url(&format!("/api/feed?limit=10&cursor={cursor}"))).send().await.unwrap();
    assert_eq!(next.status(), 200);
}

#[tokio::test]
async fn ten_thousand_distinct_pages_keep_the_page_cache_within_its_bound() {
    let Seeded { prefix, api, .. } = seeded_api(101, false).await;
    let client = reqwest::Client::new();
    // A cursor at every post but the oldest, walking one post at a time.
    let mut cursors = Vec::new();
    let mut url = api.url("/api/feed?limit=1");
    while let Some(cursor) = {
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        page["next_cursor"].as_str().map(str::to_owned)
    } {
        url = api.url(&format!("/api/feed?limit=1&cursor={cursor}"));
        cursors.push(cursor);
    }
    assert_eq!(cursors.len(), 100, "101 public posts: the last page has no cursor");
    let requests = cursors.iter().flat_map(|cursor| (1..=100).map(move |limit| (cursor, limit)));
    let statuses: Vec<u16> = futures_util::stream::iter(requests)
        .map(|(cursor, limit)| {
            let url = api.url(&format!("/api/feed?limit={limit}&cursor={cursor}"));
            let client = client.clone();
            async move { client.get(url).send().await.unwrap().status().as_u16() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert_eq!(statuses.len(), 10_000);
    assert!(statuses.iter().all(|s| *s == 200), "every one of them is a valid page");
    let (keys, bytes) = page_keys(&prefix).await;
    assert!(keys as u64 <= REDIS_SLOTS, "{keys} keys: the page cache may use {REDIS_SLOTS}");
    assert!(keys >= 500, "the cache is in use: {keys} keys");
    println!("10,000 distinct pages: {keys} Redis keys, {bytes} bytes");
}

#[tokio::test]
async fn a_node_reached_directly_limits_each_address_and_not_its_proxy() {
    let db = TestDb::fresh().await;
    seed_posts(&db, 3).await;
    let prefix = unique("r");
    let api = exposed_api(&db, &prefix, &[(settings::API_RATE, "1"), (settings::API_BURST, "5")]).await;
    let statuses = |client: reqwest::Client, url: String, n: usize| async move {
        let mut statuses = Vec::new();
        for _ in 0..n {
            let response = client.get(&url).send().await.unwrap();
            let status = response.status().as_u16();
            if status == 429 {
                assert!(response.headers().contains_key("retry-after"));
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "too many requests from this address");
            }
            statuses.push(status);
        }
        statuses
    };
    let first = statuses(client_from("127.0.0.1"), api.url("/api/feed"), 8).await;
    assert_eq!(&first[..5], [200; 5], "a burst of 5 is allowed");
    assert!(first[6..].iter().all(|s| *s == 429), "then 1 a second: {first:?}");
    let other = statuses(client_from("127.0.0.2"), api.url("/api/feed"), 5).await;
    assert_eq!(other, [200; 5], "another address has its own allowance");
    assert!(limited(&api, "requests") >= 2);
    // The same settings behind a trusted proxy (the node's address is the proxy's): not limited.
    let proxied = spawn_api_with(&db, &prefix, false, &[(settings::API_BURST, "1")]).await;
    assert_eq!(statuses(reqwest::Client::new(), proxied.url("/api/feed"), 8).await, [200; 8]);
}

#[tokio::test]
async fn a_resume_storm_is_cut_off_and_streams_per_address_are_bounded() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let api = exposed_api(&db, &prefix, &[(settings::STREAMS_PER_ADDRESS, "1000")]).await;
    // Connect, resume, close, again: a burst of 20 is served, then about one a second.
    let client = client_from("127.0.0.3");
    let mut served = 0;
    for _ in 0..40 {
        let response =
            client.get(api.url("/api/feed/stream")).header("Last-Event-ID", "1-0").send().await.unwrap();
        match response.status().as_u16() {
            200 => served += 1,
            429 => {}
            other => panic!("a stream connect answered {other}"),
        }
    }
    assert!((20..=22).contains(&served), "{served} of 40 connects served");
    assert!(limited(&api, "stream_connects") >= 18);
    assert!(api.metrics.sse_resumes.get() <= 22, "refused connects read nothing back");

    let api = exposed_api(&db, &prefix, &[(settings::STREAMS_PER_ADDRESS, "3")]).await;
    let client = client_from("127.0.0.4");
    let open = |client: reqwest::Client, url: String| async move { client.get(url).send().await.unwrap() };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stream = open(client.clone(), api.url("/api/feed/stream")).await;
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }
    assert_eq!(open(client.clone(), api.url("/api/feed/stream")).await.status(), 429, "a 4th stream");
    assert_eq!(open(client_from("127.0.0.5"), api.url("/api/feed/stream")).await.status(), 200);
    streams.pop();
    // Once the node sees the stream closed, its slot is free again.
    eventually(Duration::from_secs(10), "a closed stream's slot to be free", || {
        let (client, url) = (client.clone(), api.url("/api/feed/stream"));
        async move { (open(client, url).await.status() == 200).then_some(()) }
    })
    .await;
}

/// Opens a connection from `from` and sends half a request head.
async fn slow_head(from: &str, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    stream.write_all(b"GET /api/feed/stream HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    stream
}

/// Whether the node closed `stream` (within `within`) without answering.
async fn closed_unanswered(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer)).await.is_ok() && answer.is_empty()
}

#[tokio::test]
async fn a_slow_head_flood_does_not_stop_new_clients_being_served() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let api = exposed_api(&db, &prefix, &[]).await;
    let port = api.addr.port();
    // One address may have 16 heads on their way; the 17th connection is closed at once.
    let mut flood = Vec::new();
    for _ in 0..16 {
        flood.push(slow_head("127.0.0.6", port).await);
    }
    let mut extra = slow_head("127.0.0.6", port).await;
    assert!(closed_unanswered(&mut extra, Duration::from_secs(5)).await, "a 17th head from one address");
    assert!(limited(&api, "heads") >= 1);
    // From 20 addresses, 320 heads: past 256 on their way, a new one gets 2 s, not 30.
    for i in 0..19 {
        for _ in 0..16 {
            flood.push(slow_head(&format!("127.0.1.{i}"), port).await);
        }
    }
    let mut late = slow_head("127.0.2.1", port).await;
    let started = std::time::Instant::now();
    assert!(closed_unanswered(&mut late, Duration::from_secs(10)).await, "a slow head in a crowd");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Meanwhile a browser is served, from any address.
    for from in ["127.0.2.2", "127.0.0.1"] {
        let page = client_from(from).get(api.url("/api/feed")).send().await.unwrap();
        assert_eq!(page.status(), 200, "from {from}");
        let stream = client_from(from).get(api.url("/api/feed/stream")).send().await.unwrap();
        assert_eq!(stream.status(), 200, "a stream from {from}");
    }
    drop(flood);
}
