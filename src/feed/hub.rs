//! The live feed: published posts as Server-Sent Events, fanned out to a node's streams
//! (invariant 6). The HTTP route is `api::stream`; this module owns what every stream shares.
//!
//! One hub per API node listens to the feed's Redis channel and fans every post out to all of
//! the node's clients, encoded once. An event's `id:` is the post's offset in the Redis stream,
//! so a reconnecting browser sends `Last-Event-ID` and gets exactly what it missed, read back from
//! the stream; if the stream no longer reaches back that far, one `event: resync` tells it to
//! reload page 1. On every (re)subscribe the hub catches up from the stream, so a pub/sub hiccup
//! loses nothing. Each client may fall behind by a bounded number of events; a slower one is
//! disconnected, and resumes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast;

use crate::kv::{self, FeedKeys};
use crate::metrics::Metrics;
use crate::shutdown::CancellationToken;
use crate::types::PostId;

/// Events a client may fall behind by before it is dropped (it then resumes by Last-Event-ID).
const CLIENT_BACKLOG: usize = 256;
/// Events read back from the stream per round trip while resuming or catching up.
const REPLAY_BATCH: usize = 500;
/// After a resync a client reloads page 1, which a cache may have made up to a second before:
/// the posts of the stream's last two seconds (at most this many) go out again after the
/// resync, so that none published just before it is missed (clients skip posts they have).
const RESYNC_OVERLAP_MS: u64 = 2000;
const RESYNC_OVERLAP_EVENTS: usize = 128;
/// Tells a browser it missed more than the stream keeps: reload page 1.
pub const RESYNC: &[u8] = b"event: resync\ndata: {}\n\n";

/// A stream offset, as Redis writes it: `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(u64, u64);

impl Offset {
    pub fn parse(raw: &str) -> Option<Self> {
        let (ms, seq) = raw.trim().split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One post event (or a resync), encoded once for every client (cloning it shares the bytes).
#[derive(Debug, Clone)]
pub struct Event {
    pub offset: Offset,
    pub bytes: Bytes,
    /// The post's id, where read back from the stream (a resumed stream checks it is still there).
    pub post: Option<PostId>,
}

/// What the hub sends to every stream of the node. Heartbeats and the end come through the same
/// channel as posts, so that a stream waits on nothing else: no timer and no cancellation
/// future per client (each would cost a lock or a timer entry per event per client).
#[derive(Debug, Clone)]
enum Live {
    Event(Event),
    /// A comment that keeps idle connections (and the proxies on their way) open.
    Heartbeat,
    /// The node is draining: every stream ends, and its browser resumes on another node.
    Close,
}

const HEARTBEAT: &[u8] = b": heartbeat\n\n";

fn encode(offset: Offset, json: &str) -> Bytes {
    // The JSON of a post is one line (serde_json never writes raw newlines), so one data line.
    Bytes::from(format!("id: {offset}\nevent: post\ndata: {json}\n\n"))
}

/// The event of a stream entry (its id and fields), if it is a post's.
fn entry_event(id: &str, fields: &HashMap<String, String>) -> Option<Event> {
    let (offset, json) = (Offset::parse(id)?, fields.get("post")?);
    let post = fields.get("id").and_then(|id| id.parse().ok()).or_else(|| post_id_in(json));
    Some(Event { offset, bytes: encode(offset, json), post })
}

/// The id in a post's JSON (stream entries from before the id was kept beside it).
fn post_id_in(json: &str) -> Option<PostId> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: PostId,
    }
    serde_json::from_str::<Id>(json).ok().map(|post| post.id)
}

/// Fans the feed's live channel out to this node's clients.
pub struct Hub {
    sender: broadcast::Sender<Live>,
    keys: FeedKeys,
    redis: kv::Pool,
    clients: AtomicUsize,
    max_clients: usize,
    heartbeat: Duration,
    /// Cancelled when the node starts draining: [`Live::Close`] goes out to every stream.
    pub closing: CancellationToken,
}

impl Hub {
    pub fn new(keys: FeedKeys, redis: kv::Pool, max_clients: usize, heartbeat: Duration) -> Arc<Self> {
        let (sender, _) = broadcast::channel(CLIENT_BACKLOG);
        let clients = AtomicUsize::new(0);
        let closing = CancellationToken::new();
        Arc::new(Self { sender, keys, redis, clients, max_clients, heartbeat, closing })
    }

    /// Where the stream ends now: [`Hub::run`] from here misses no post published after it.
    pub async fn start(&self) -> Option<Offset> {
        self.newest().await.ok().flatten()
    }

    /// Listens until `shutdown`, resubscribing after any error and catching up from the stream
    /// each time (from `last`, the first time), so that no published post is missed.
    pub async fn run(
        self: Arc<Self>,
        client: kv::Client,
        mut last: Option<Offset>,
        shutdown: CancellationToken,
    ) {
        loop {
            let listened = async {
                let mut pubsub = client.pubsub().await?;
                pubsub.subscribe(&self.keys.channel).await?;
                // Whatever was published while we were not subscribed is in the stream, unless
                // it was trimmed meanwhile: then every client reloads page 1.
                if let Some(seen) = last
                    && self.gap_after(seen).await?
                {
                    self.send(Event { offset: seen, bytes: Bytes::from_static(RESYNC), post: None });
                    last = None;
                    for event in self.recent().await? {
                        last = Some(event.offset);
                        self.send(event);
                    }
                }
                for event in self.read_after(last).await? {
                    last = Some(event.offset);
                    self.send(event);
                }
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Ok(payload) = message.get_payload::<String>() else { continue };
                    let Some((offset, json)) = payload.split_once(' ') else { continue };
                    let Some(offset) = Offset::parse(offset) else { continue };
                    if last.is_some_and(|last| offset <= last) {
                        continue;
                    }
                    last = Some(offset);
                    self.send(Event { offset, bytes: encode(offset, json), post: None });
                }
                Ok::<(), anyhow::Error>(())
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.closing.cancelled() => return,
                result = listened => match result {
                    Ok(()) => tracing::warn!("feed subscription ended; resubscribing"),
                    Err(e) => tracing::warn!(error = %e, "feed subscription lost; resubscribing"),
                },
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.closing.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn send(&self, event: Event) {
        // No receivers (no open stream) is no error.
        let _ = self.sender.send(Live::Event(event));
    }

    /// Sends every stream a heartbeat every `heartbeat`, and [`Live::Close`] once the node
    /// drains.
    pub async fn beat(self: Arc<Self>, shutdown: CancellationToken) {
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.closing.cancelled() => {
                    let _ = self.sender.send(Live::Close);
                    return;
                }
                _ = beat.tick() => {
                    let _ = self.sender.send(Live::Heartbeat);
                }
            }
        }
    }

    /// The stream's newest `count` entries, newest first.
    async fn newest_entries(&self, count: usize) -> anyhow::Result<Vec<(String, HashMap<String, String>)>> {
        let mut conn = self.redis.get().await?;
        let mut command = redis::cmd("XREVRANGE");
        command.arg(&self.keys.stream).arg("+").arg("-").arg("COUNT").arg(count);
        Ok(command.query_async(&mut conn).await?)
    }

    /// The newest offset in the stream, if any.
    async fn newest(&self) -> anyhow::Result<Option<Offset>> {
        Ok(self.newest_entries(1).await?.first().and_then(|(id, _)| Offset::parse(id)))
    }

    /// The events of the stream's last `RESYNC_OVERLAP_MS` (at most `RESYNC_OVERLAP_EVENTS`),
    /// oldest first: what follows a resync.
    pub async fn recent(&self) -> anyhow::Result<Vec<Event>> {
        let newest = self.newest_entries(RESYNC_OVERLAP_EVENTS).await?;
        let mut events: Vec<Event> =
            newest.iter().filter_map(|(id, fields)| entry_event(id, fields)).collect();
        if let Some(newest) = events.first().map(|e| e.offset.0) {
            events.retain(|e| e.offset.0 + RESYNC_OVERLAP_MS >= newest);
        }
        events.reverse();
        Ok(events)
    }

    /// Every event after `after` (all of them for `None`) still in the stream, oldest first.
    pub async fn read_after(&self, after: Option<Offset>) -> anyhow::Result<Vec<Event>> {
        Ok(self.read_at_most(after, usize::MAX).await?.unwrap_or_default())
    }

    /// Like [`Hub::read_after`], but `None` past `most` events: a resume is bounded work (the
    /// client reloads page 1 instead).
    pub async fn read_at_most(
        &self,
        after: Option<Offset>,
        most: usize,
    ) -> anyhow::Result<Option<Vec<Event>>> {
        let mut conn = self.redis.get().await?;
        let mut events = Vec::new();
        let mut from = after.map_or_else(|| "-".to_owned(), |o| format!("({o}"));
        loop {
            let batch: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                .arg(&self.keys.stream)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(REPLAY_BATCH.min(most.saturating_add(1) - events.len()))
                .query_async(&mut conn)
                .await?;
            let full = batch.len() == REPLAY_BATCH;
            for (id, fields) in batch {
                let Some(event) = entry_event(&id, &fields) else { continue };
                from = format!("({}", event.offset);
                events.push(event);
            }
            if events.len() > most {
                return Ok(None);
            }
            if !full {
                return Ok(Some(events));
            }
        }
    }

    /// Whether the stream no longer reaches back to `after`, so that a reader who saw `after`
    /// may have missed entries that were trimmed. (Redis keeps no record of trimmed ids, so a
    /// reader whose very next entry survived is told to resync too: harmless, it reloads page 1.)
    pub async fn gap_after(&self, after: Offset) -> anyhow::Result<bool> {
        let mut conn = self.redis.get().await?;
        let first: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(&self.keys.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(match first.first().and_then(|(id, _)| Offset::parse(id)) {
            Some(first) => first > after,
            // The reader saw an entry, and the stream is gone (Redis lost it): it may miss some.
            None => true,
        })
    }
}
/// A client's place on the node, taken before it reads back what it missed, so that nothing
/// published meanwhile is lost; counted out when its stream ends, however it ends.
pub struct Listener {
    live: broadcast::Receiver<Live>,
    slot: ClientSlot,
}

struct ClientSlot(Arc<Hub>, Arc<Metrics>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
        self.1.sse_clients.dec();
    }
}

impl Hub {
    /// A place for one more client, unless the node has `max_clients` already.
    pub fn admit(self: &Arc<Self>, metrics: &Arc<Metrics>) -> Option<Listener> {
        if self.clients.fetch_add(1, Ordering::Relaxed) >= self.max_clients {
            self.clients.fetch_sub(1, Ordering::Relaxed);
            metrics.sse_rejected.inc();
            return None;
        }
        metrics.sse_clients.inc();
        let slot = ClientSlot(self.clone(), metrics.clone());
        Some(Listener { live: self.sender.subscribe(), slot })
    }
}

impl Listener {
    /// The live events from here on, skipping those up to `replayed_to` (sent already); ends
    /// when the node drains or the client falls too far behind (it then resumes).
    pub fn events(self, replayed_to: Option<Offset>) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::unfold(
            (self.live, replayed_to, self.slot),
            |(mut live, mut replayed_to, slot)| async move {
                loop {
                    let bytes = match live.recv().await {
                        Ok(Live::Event(event)) => {
                            if replayed_to.is_some_and(|r| event.offset <= r) {
                                continue;
                            }
                            replayed_to = None;
                            slot.1.sse_events.inc();
                            event.bytes
                        }
                        Ok(Live::Heartbeat) => Bytes::from_static(HEARTBEAT),
                        Ok(Live::Close) | Err(broadcast::error::RecvError::Closed) => return None,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Too slow: drop it; it reconnects and resumes by Last-Event-ID.
                            slot.1.sse_dropped.inc();
                            return None;
                        }
                    };
                    return Some((Ok(bytes), (live, replayed_to, slot)));
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_and_order_like_redis_ids() {
        assert_eq!(Offset::parse("1700000000000-3"), Some(Offset(1_700_000_000_000, 3)));
        assert!(Offset::parse("1-10") > Offset::parse("1-9"));
        assert!(Offset::parse("2-0") > Offset::parse("1-99"));
        for bad in ["", "1", "a-1", "1-b", "-1", "1-2-3"] {
            assert_eq!(Offset::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Offset(5, 1).to_string(), "5-1");
    }
}
