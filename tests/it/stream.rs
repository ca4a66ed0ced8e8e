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
    let mut client = SseClient::open(api, None).await;
    post(worker, 1, "seen before the disconnect").await;
    let seen = client.next().await;
    drop(client);
    for n in 2..=6 {
        post(worker, n, &format!("missed post number {n}")).await;
    }
    let mut resumed = SseClient::open(api, seen.id.as_deref()).await;
    for n in 2..=6 {
        assert_eq!(resumed.next().await.text(), format!("missed post number {n}"));
    }
    post(worker, 7, "live again after the catch-up").await;
    assert_eq!(resumed.next().await.text(), "live again after the catch-up", "no duplicates, no gaps");
    assert_eq!(api.metrics.sse_resumes.get(), 1);
}

#[tokio::test]
async fn a_gap_older_than_the_stream_gets_one_resync() {
    let Stack { prefix, worker, api, .. } = &Stack::start(false).await;
    let mut client = SseClient::open(api, None).await;
    post(worker, 1, "the last post this browser saw").await;
    let seen = client.next().await;
    drop(client);
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
    let mut resumed = SseClient::open(api, seen.id.as_deref()).await;
    assert_eq!(resumed.next().await.kind, "resync");
    assert_eq!(api.metrics.sse_resyncs.get(), 1);
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
