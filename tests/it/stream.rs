//! The live feed over Server-Sent Events (invariant 6): every published post reaches every open
//! stream, reconnections resume exactly where they left off, and a pub/sub hiccup loses nothing.

use std::time::Duration;

use botfleet::kv::FeedKeys;
use serde_json::Value;

use crate::helpers::{
    MAIN_BOT, Running, TestDb, deliver_update, eventually, spawn_api, spawn_api_with, spawn_fake,
    spawn_worker, text_update, unique,
};
use crate::helpers::{Stack, redis};

/// One event: its id, kind and data.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<String>,
    kind: String,
    data: String,
}

impl Event {
    fn text(&self) -> String {
        serde_json::from_str::<Value>(&self.data).unwrap()["text"].as_str().unwrap_or_default().to_owned()
    }
}

struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    async fn open(api: &Running, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new().get(api.url("/api/feed/stream"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self { response, buffer: String::new() }
    }

    /// The next event (comments and the retry hint skipped), within five seconds.
    async fn next(&mut self) -> Event {
        let read = async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut event = Event { id: None, kind: "message".into(), data: String::new() };
                    let mut is_event = false;
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("id: ") {
                            event.id = Some(v.to_owned());
                        } else if let Some(v) = line.strip_prefix("event: ") {
                            event.kind = v.to_owned();
                            is_event = true;
                        } else if let Some(v) = line.strip_prefix("data: ") {
                            event.data = v.to_owned();
                            is_event = true;
                        }
                    }
                    if is_event {
                        return event;
                    }
                }
                let chunk = self.response.chunk().await.unwrap().expect("the stream ended");
                self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read).await.expect("no event within 5 s")
    }
}

async fn post(worker: &Running, update_id: i64, text: &str) {
    let response = deliver_update(worker, &MAIN_BOT, &text_update(update_id, 42, text)).await;
    assert_eq!(response.status(), 200);
}

/// A browser that saw the first post and left: the event id it resumes from.
async fn saw_one_and_left(worker: &Running, api: &Running) -> Option<String> {
    let mut client = SseClient::open(api, None).await;
    post(worker, 1, "seen before the disconnect").await;
    client.next().await.id
}

#[tokio::test]
async fn a_published_post_reaches_open_streams_on_every_api_node() {
    let db = TestDb::fresh().await;
    let prefix = unique("r");
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &prefix, &telegram, &[MAIN_BOT]).await;
    let (a, b) = (spawn_api(&db, &prefix, true).await, spawn_api(&db, &prefix, true).await);
    let (mut on_a, mut on_b) = (SseClient::open(&a, None).await, SseClient::open(&b, None).await);
    post(&worker, 1, "live on every node at once").await;
    for client in [&mut on_a, &mut on_b] {
        let event = client.next().await;
        assert_eq!(event.kind, "post");
        assert_eq!(event.text(), "live on every node at once");
        assert!(event.id.is_some_and(|id| id.contains('-')), "the id is the stream offset");
    }
    // The same post is on page 1 of both nodes' feeds within a second.
    for api in [&a, &b] {
        eventually(Duration::from_secs(1), "the post on page 1", || async {
            let page: Value = reqwest::get(api.url("/api/feed")).await.ok()?.json().await.ok()?;
            (page["posts"][0]["text"] == "live on every node at once").then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_reconnection_with_last_event_id_gets_exactly_the_missed_posts_in_order() {
    let Stack { worker, api, .. } = &Stack::start(false).await;
    let seen = saw_one_and_left(worker, api).await;
    for n in 2..=6 {
        post(worker, n, &format!("missed post number {n}")).await;
    }
    let mut resumed = SseClient::open(api, seen.as_deref()).await;
    for n in 2..=6 {
        assert_eq!(resumed.next().await.text(), format!("missed post number {n}"));
    }
    post(worker, 7, "live again after the catch-up").await;
    assert_eq!(resumed.next().await.text(), "live again after the catch-up", "no duplicates, no gaps");
    assert_eq!(api.metrics.sse_resumes.get(), 1);
}

#[tokio::test]
async fn a_resumed_stream_does_not_replay_posts_deleted_or_banned_since() {
    let Stack { db, worker, api, .. } = &Stack::start(false).await;
    let seen = saw_one_and_left(worker, api).await;
    post(worker, 2, "missed and still there").await;
    post(worker, 3, "missed and then deleted").await;
    let mallory = text_update(4, 66, "missed, by an author banned since");
    assert_eq!(deliver_update(worker, &MAIN_BOT, &mallory).await.status(), 200);
    // What the bot's delete and ban commit (their own tests cover the commands).
    let owner = db.owner().await;
    owner.batch_execute("DELETE FROM posts WHERE text = 'missed and then deleted'").await.unwrap();
    owner.batch_execute("UPDATE users SET is_banned = true WHERE user_id = 66").await.unwrap();
    let mut resumed = SseClient::open(api, seen.as_deref()).await;
    assert_eq!(resumed.next().await.text(), "missed and still there");
    post(worker, 5, "live after the catch-up").await;
    assert_eq!(resumed.next().await.text(), "live after the catch-up", "the others were not replayed");
}

#[tokio::test]
async fn a_post_left_out_of_a_resume_is_not_sent_when_its_publish_reaches_the_node_late() {
    let Stack { prefix, worker, api, .. } = &Stack::start(false).await;
    let seen = saw_one_and_left(worker, api).await;
    post(worker, 2, "missed and still there").await;
    // A post in the stream whose publish has not reached this node yet (a Redis Cluster relays
    // it from node to node), and which left the feed since (no such post in Postgres).
    let keys = FeedKeys::new(prefix);
    let late = r#"{"id":987654321,"text":"published, then gone"}"#;
    let mut conn = redis().await;
    let offset: String = redis::cmd("XADD")
        .arg(&keys.stream)
        .arg("*")
        .arg("post")
        .arg(late)
        .arg("id")
        .arg("987654321")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut resumed = SseClient::open(api, seen.as_deref()).await;
    assert_eq!(resumed.next().await.text(), "missed and still there");
    // Its publish arrives now, after the resume read the stream without it.
    let () = redis::cmd("PUBLISH")
        .arg(&keys.channel)
        .arg(format!("{offset} {late}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    post(worker, 3, "live after the late publish").await;
    assert_eq!(resumed.next().await.text(), "live after the late publish", "the post left out stays out");
}

#[tokio::test]
async fn a_resume_further_back_than_its_bound_gets_one_resync_not_the_backlog() {
    let Stack { prefix, worker, api, .. } = &Stack::start(false).await;
    let seen = saw_one_and_left(worker, api).await;
    // More posts than a resume replays go out meanwhile (published as a worker publishes).
    let view = |id: i64| botfleet::feed::PostView {
        id: botfleet::types::PostId(id),
        bot_id: botfleet::types::BotId(1),
        text: format!("backlog post {id}"),
        has_media: false,
        published_at: chrono::Utc::now(),
        author: botfleet::feed::Author { first_name: "Ada".into(), username: None },
    };
    let backlog: Vec<_> = (1..=botfleet::api::MAX_RESUME as i64 + 1).map(|n| view(1_000_000 + n)).collect();
    botfleet::feed::publish::publish(&mut redis().await, &FeedKeys::new(prefix), &backlog, 100_000, 1)
        .await
        .unwrap();
    let mut resumed = SseClient::open(api, seen.as_deref()).await;
    assert_eq!(resumed.next().await.kind, "resync", "bounded work: reload page 1 instead");
    assert_eq!(api.metrics.sse_resyncs.get(), 1);
}

#[tokio::test]
async fn a_gap_older_than_the_stream_gets_one_resync() {
    let Stack { prefix, worker, api, .. } = &Stack::start(false).await;
    let seen = saw_one_and_left(worker, api).await;
    for n in 2..=4 {
        post(worker, n, &format!("post number {n} of the gap")).await;
    }
    // The stream keeps only the newest entry now: what the browser missed is gone from it.
    let () = redis::cmd("XTRIM")
        .arg(FeedKeys::new(prefix).stream)
        .arg("MAXLEN")
        .arg(1)
        .query_async::<i64>(&mut redis().await)
        .await
        .map(drop)
        .unwrap();
    let mut resumed = SseClient::open(api, seen.as_deref()).await;
    assert_eq!(resumed.next().await.kind, "resync");
    assert_eq!(api.metrics.sse_resyncs.get(), 1);
    assert_eq!(
        resumed.next().await.text(),
        "post number 4 of the gap",
        "then the last seconds' posts, which a cached page 1 may lack"
    );
    let bad = reqwest::Client::new()
        .get(api.url("/api/feed/stream"))
        .header("last-event-id", "not-an-id")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn killing_the_pubsub_connections_loses_no_event() {
    let Stack { worker, api, .. } = &Stack::start(false).await;
    let mut client = SseClient::open(api, None).await;
    let mut conn = redis().await;
    // Each post is read before the next: the first proves the hub subscribed (it sends nothing
    // before), and each one after a kill that it resubscribed or caught up.
    for n in 1..=6 {
        if n % 2 == 0 {
            // Every pub/sub connection of the server goes, the hub's among them.
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        post(worker, n, &format!("post {n} around a pub/sub hiccup")).await;
        assert_eq!(client.next().await.text(), format!("post {n} around a pub/sub hiccup"));
    }
}

#[tokio::test]
async fn a_node_refuses_streams_past_its_limit() {
    let db = TestDb::fresh().await;
    let api = spawn_api_with(&db, &unique("r"), false, &[("BOTFLEET_SSE_MAX_CLIENTS", "1")]).await;
    let first = SseClient::open(&api, None).await;
    let second = reqwest::get(api.url("/api/feed/stream")).await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(api.metrics.sse_clients.get(), 1);
    drop(first);
    eventually(Duration::from_secs(2), "the closed stream to free its slot", || async {
        (reqwest::get(api.url("/api/feed/stream")).await.ok()?.status() == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_draining_node_ends_its_streams_and_stops() {
    let db = TestDb::fresh().await;
    // A long grace: a stream left open would keep the node from stopping for a minute.
    let api = spawn_api_with(&db, &unique("r"), false, &[("BOTFLEET_SHUTDOWN_GRACE_SECS", "60")]).await;
    let mut client = SseClient::open(&api, None).await;
    let Running { stop, handle, .. } = api;
    stop.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = client.response.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open while its node drained");
    let stopped = tokio::time::timeout(Duration::from_secs(10), handle).await;
    stopped.expect("the node did not stop").unwrap().expect("the node must drain and stop cleanly");
}

#[tokio::test]
async fn a_quiet_stream_gets_heartbeats() {
    let db = TestDb::fresh().await;
    let api = spawn_api_with(&db, &unique("r"), false, &[("BOTFLEET_SSE_HEARTBEAT_SECS", "1")]).await;
    let mut client = SseClient::open(&api, None).await;
    let beat = tokio::time::timeout(Duration::from_secs(5), async {
        while !client.buffer.contains(": heartbeat\n\n") {
            let chunk = client.response.chunk().await.unwrap().expect("the stream ended");
            client.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await;
    assert!(beat.is_ok(), "no heartbeat within 5 s with a heartbeat every second: {:?}", client.buffer);
}

/// A bare TCP connection to a node, to see exactly what it writes.
struct Raw {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl Raw {
    async fn connect(api: &Running) -> Self {
        Self { stream: tokio::net::TcpStream::connect(api.addr).await.unwrap(), buffer: Vec::new() }
    }

    async fn send(&mut self, request: &str) {
        tokio::io::AsyncWriteExt::write_all(&mut self.stream, request.as_bytes()).await.unwrap();
    }

    /// Reads until `done` finds what is wanted in the buffer (it says how many bytes that is),
    /// within five seconds, and takes those bytes off the front.
    async fn read(&mut self, mut done: impl FnMut(&[u8]) -> Option<usize>) -> String {
        let read = async {
            loop {
                if let Some(n) = done(&self.buffer) {
                    return String::from_utf8(self.buffer.drain(..n).collect()).unwrap();
                }
                let mut chunk = [0; 4096];
                let n = tokio::io::AsyncReadExt::read(&mut self.stream, &mut chunk).await.unwrap();
                assert!(n > 0, "the connection closed; got {:?}", String::from_utf8_lossy(&self.buffer));
                self.buffer.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read).await.expect("nothing more within 5 s")
    }

    /// Everything up to and including the next `end`.
    async fn until(&mut self, end: &str) -> String {
        self.read(|buffer| {
            buffer.windows(end.len()).position(|w| w == end.as_bytes()).map(|at| at + end.len())
        })
        .await
    }

    /// The JSON body that follows `head` (read with [`Raw::until`]), by its `content-length`.
    async fn json(&mut self, head: &str) -> Value {
        let length: usize =
            head.split("content-length: ").nth(1).unwrap().split("\r\n").next().unwrap().parse().unwrap();
        serde_json::from_str(&self.read(|b| (b.len() >= length).then_some(length)).await).unwrap()
    }

    /// Whether the node closed the connection (within five seconds) once the buffer is read.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut self.stream, &mut rest);
        tokio::time::timeout(Duration::from_secs(5), read).await.is_ok_and(|r| r.is_ok() && rest.is_empty())
    }
}

const STREAM_REQUEST: &str = "GET /api/feed/stream HTTP/1.1\r\nHost: test\r\n\r\n";

#[tokio::test]
async fn a_connection_opening_with_a_stream_gets_its_events_unframed_until_the_client_leaves() {
    let Stack { worker, api, .. } = &Stack::start(false).await;
    let mut raw = Raw::connect(api).await;
    raw.send(STREAM_REQUEST).await;
    let head = raw.until("\r\n\r\n").await.to_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "no chunks: closing the connection ends the body: {head}");
    assert_eq!(raw.until("\n\n").await, "retry: 3000\n\n");
    post(worker, 1, "written straight to the socket").await;
    let event = raw.until("\n\n").await;
    assert!(event.starts_with("id: ") && event.contains("\nevent: post\ndata: {"), "{event}");
    assert!(event.contains("written straight to the socket"), "{event}");
    assert_eq!(api.metrics.sse_clients.get(), 1);
    drop(raw);
    // Noticed from the closed socket, not at the next write (a heartbeat is 15 s away).
    eventually(Duration::from_secs(2), "the node to count the client out", || async {
        (api.metrics.sse_clients.get() == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_stream_asked_for_on_a_connection_that_served_other_requests_still_streams() {
    let Stack { worker, api, .. } = &Stack::start(false).await;
    let mut raw = Raw::connect(api).await;
    raw.send("GET /api/feed?limit=1 HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let head = raw.until("\r\n\r\n").await.to_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(raw.json(&head).await["posts"], serde_json::json!([]));
    // The same connection, kept alive: now hyper serves the stream, in chunks.
    raw.send(STREAM_REQUEST).await;
    let head = raw.until("\r\n\r\n").await.to_lowercase();
    assert!(head.contains("content-type: text/event-stream\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    raw.until("retry: 3000\n\n").await;
    post(worker, 1, "through hyper as well").await;
    raw.until("through hyper as well").await;
}

#[tokio::test]
async fn a_stream_request_with_a_long_head_is_served_too() {
    let Stack { api, .. } = &Stack::start(false).await;
    // Up to 16 KiB the node serves it itself; a longer head goes to hyper, which streams too.
    for (cookie, served_as) in [(6_000, "connection: close\r\n"), (20_000, "transfer-encoding: chunked\r\n")]
    {
        let mut raw = Raw::connect(api).await;
        let cookie = "c".repeat(cookie);
        raw.send(&format!("GET /api/feed/stream HTTP/1.1\r\nHost: test\r\nCookie: {cookie}\r\n\r\n")).await;
        let head = raw.until("\r\n\r\n").await.to_lowercase();
        assert!(head.starts_with("http/1.1 200 ok\r\n") && head.contains(served_as), "{head}");
        raw.until("retry: 3000\n\n").await;
    }
}

#[tokio::test]
async fn a_refused_stream_on_a_fresh_connection_gets_a_whole_json_error_and_the_close() {
    let Stack { api, .. } = &Stack::start(false).await;
    let mut raw = Raw::connect(api).await;
    raw.send("GET /api/feed/stream HTTP/1.1\r\nHost: test\r\nLast-Event-ID: yesterday\r\n\r\n").await;
    let head = raw.until("\r\n\r\n").await.to_lowercase();
    assert!(head.starts_with("http/1.1 400 bad request\r\n"), "{head}");
    assert!(head.contains("content-type: application/json\r\n"), "{head}");
    assert_eq!(raw.json(&head).await["error"], "Last-Event-ID is not an event id of this stream");
    assert!(raw.closed().await, "the connection must close after the answer");
    assert_eq!(api.metrics.sse_clients.get(), 0);
}
