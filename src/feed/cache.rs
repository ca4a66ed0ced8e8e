//! The feed page cache: in-process for the hottest pages, then Redis, then the database.
//!
//! Pages carry a version of the feed, so one INCR makes cached pages stale on every node — never
//! `KEYS`, never a delete. Two versions: the generation, which every publish and removal bumps,
//! for pages that start at the newest post; and the removal count, which only removals (a
//! deleted post, a banned author) bump, for pages after a cursor — a new post never changes
//! what comes after a given post, so those pages stay cached while the feed grows. Concurrent
//! misses of one page on one node make one database query (single-flight). A page is only
//! cached from a database that has replayed the primary's WAL past the latest publish or removal
//! (see `store::replicas::Reader`). Versions never go back, even when Redis loses data
//! (`feed_state.lua`): a page cached before cannot become valid again.
//!
//! Readers choose what they ask for, so what they can make Redis keep is bounded whatever they
//! ask: a page goes into one of [`REDIS_SLOTS`] keys (by a hash of its name, with its version and
//! name stored beside it and checked on every read), and only if it takes at most
//! [`MAX_REDIS_PAGE`] bytes. The page cache therefore holds at most 1,024 × 128 KiB = 128 MiB of
//! Redis, whatever the traffic (typical pages are a few KiB: a few MiB in all). Bigger pages are
//! still cached in process and by Nginx.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;
use tokio::sync::OnceCell;

use crate::keyed::Keyed;
use crate::kv::{self, FeedKeys, scripts};
use crate::metrics::Metrics;
use crate::store::replicas::Freshness;

/// Pages kept in process (of the current versions; all are dropped when full).
const LOCAL_PAGES: usize = 64;
/// How long Redis keeps a page (a new generation makes it unreachable long before).
const REDIS_TTL: Duration = Duration::from_secs(60);
/// Redis keys the page cache may use, at most.
pub const REDIS_SLOTS: u64 = 1024;
/// The largest page kept in Redis, in bytes.
pub const MAX_REDIS_PAGE: usize = 128 * 1024;

/// A rendered page: the JSON body, its entity tag and the `Link` to the next page.
#[derive(Debug, Clone)]
pub struct Page {
    pub body: Bytes,
    pub etag: String,
    pub link: Option<String>,
}

impl Page {
    pub fn new(body: Vec<u8>, link: Option<String>) -> Self {
        // DefaultHasher::new() has fixed keys: the same body gets the same tag on every node.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut hasher);
        Self { etag: format!("\"{:016x}\"", hasher.finish()), body: Bytes::from(body), link }
    }

    /// The page as Redis keeps it: under `name` (with its version), which a read checks.
    fn encode(&self, name: &str) -> Vec<u8> {
        let link = self.link.as_deref().unwrap_or("");
        let mut out = format!("{name}\n{}\n{link}\n", self.etag).into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// The page kept under `name`, if that is what `raw` holds.
    fn decode(raw: &[u8], name: &str) -> Option<Self> {
        let mut parts = raw.splitn(4, |b| *b == b'\n');
        if parts.next()? != name.as_bytes() {
            return None;
        }
        let etag = String::from_utf8(parts.next()?.to_vec()).ok()?;
        let link = String::from_utf8(parts.next()?.to_vec()).ok()?;
        let body = Bytes::copy_from_slice(parts.next()?);
        Some(Self { etag, link: (!link.is_empty()).then_some(link), body })
    }
}

/// What the cache needs to know about the feed right now.
#[derive(Debug, Clone, Copy)]
pub struct FeedState {
    /// Bumped by every publish and removal.
    pub generation: i64,
    /// Bumped by removals only.
    pub removals: i64,
    /// What a replica must have replayed to be read from.
    pub fresh: Freshness,
}

pub struct PageCache {
    /// The state Redis: the feed's versions.
    redis: kv::Shared,
    /// Where pages are kept: may be another Redis, one that evicts.
    pages: kv::Shared,
    keys: FeedKeys,
    metrics: Arc<Metrics>,
    /// Cache key → page; keys carry their version, so stale entries are never found.
    local: Mutex<HashMap<String, Arc<Page>>>,
    /// One load per key at a time on this node (single-flight).
    flights: Keyed<OnceCell<Arc<Page>>>,
    states: SharedReads<Option<FeedState>>,
    /// The highest versions this process has seen: Redis must not take them back.
    seen: Mutex<(i64, i64)>,
}

impl PageCache {
    pub fn new(redis: kv::Pool, pages: kv::Pool, keys: FeedKeys, metrics: Arc<Metrics>) -> Self {
        Self {
            redis: kv::Shared::new(redis),
            pages: kv::Shared::new(pages),
            keys,
            metrics,
            local: Mutex::default(),
            flights: Keyed::default(),
            states: SharedReads::default(),
            seen: Mutex::default(),
        }
    }

    /// The feed's versions and WAL position, or `None` if Redis cannot tell (then pages are
    /// served uncached). Every request needs it: concurrent requests share a read.
    pub async fn state(&self) -> Option<FeedState> {
        self.states
            .get(|| {
                self.metrics.feed_state_reads.inc();
                self.read_state()
            })
            .await
    }

    async fn read_state(&self) -> Option<FeedState> {
        let mut conn = self.redis.get().await.ok()?;
        let seen = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, removals, wal_position): (i64, i64, Option<i64>) = scripts::FEED_STATE
            .key(&self.keys.generation)
            .key(&self.keys.removals)
            .key(&self.keys.wal_position)
            .arg(seen.0)
            .arg(seen.1)
            .invoke_async(&mut conn)
            .await
            .inspect_err(|_| self.redis.reset())
            .ok()?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            *seen = (seen.0.max(generation), seen.1.max(removals));
        }
        let fresh = wal_position.map_or(Freshness::Unknown, Freshness::Replayed);
        Some(FeedState { generation, removals, fresh })
    }

    /// The page `name` as of feed `version`, loading it with `load` on a miss.
    pub async fn get<E, F, Fut>(&self, version: i64, name: &str, load: F) -> Result<Arc<Page>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Page, E>>,
    {
        // Names carry no newline: they are made by `feed::pages` from numbers and fixed words.
        let key = format!("{version}:{name}");
        if let Some(page) = self.local_get(&key) {
            self.metrics.page_cache.with_label_values(&["local_hit"]).inc();
            return Ok(page);
        }
        let flight = self.flights.acquire(&key);
        let page = flight
            .get_or_try_init(|| async {
                if let Some(page) = self.redis_get(name, &key).await {
                    self.metrics.page_cache.with_label_values(&["redis_hit"]).inc();
                    return Ok(Arc::new(page));
                }
                self.metrics.page_cache.with_label_values(&["miss"]).inc();
                let page = load().await?;
                self.redis_set(name, &key, &page).await;
                Ok(Arc::new(page))
            })
            .await
            .cloned();
        if let Ok(page) = &page {
            self.local_put(&key, page.clone());
        }
        page
    }

    fn local_get(&self, key: &str) -> Option<Arc<Page>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn local_put(&self, key: &str, page: Arc<Page>) {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if local.len() >= LOCAL_PAGES {
            // Mostly stale versions by then: start afresh rather than track ages.
            local.clear();
        }
        local.insert(key.to_owned(), page);
    }

    /// The Redis key page `name` goes into, one of `REDIS_SLOTS`, whatever its version: a new
    /// version of a page replaces the old one.
    fn slot(&self, name: &str) -> String {
        // DefaultHasher::new() has fixed keys: every node picks the same slot.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        self.keys.page_slot(hasher.finish() % REDIS_SLOTS)
    }

    /// The page kept as `key` (version and name) in `name`'s slot, if it is there.
    async fn redis_get(&self, name: &str, key: &str) -> Option<Page> {
        let mut conn = self.pages.get().await.ok()?;
        let raw: Option<Vec<u8>> =
            conn.get(self.slot(name)).await.inspect_err(|_| self.pages.reset()).ok()?;
        raw.and_then(|raw| Page::decode(&raw, key))
    }

    async fn redis_set(&self, name: &str, key: &str, page: &Page) {
        let raw = page.encode(key);
        if raw.len() > MAX_REDIS_PAGE {
            return;
        }
        // A page that could not be cached is still served.
        if let Ok(mut conn) = self.pages.get().await {
            let _: Result<(), _> = conn.set_ex(self.slot(name), raw, REDIS_TTL.as_secs()).await;
        }
    }
}

/// Concurrent reads of one value that share a round trip, yet never answer from a read that
/// started before they asked: one read is in flight at a time, and whoever asks meanwhile waits
/// for it to end and shares the next, which starts after all of them asked. (So a page 1 asked
/// for after a publish's answer always has the new post.)
struct SharedReads<T> {
    /// The next read, not yet started: whoever asks joins it.
    next: Mutex<Arc<OnceLock<T>>>,
    turn: tokio::sync::Mutex<()>,
}

impl<T> Default for SharedReads<T> {
    fn default() -> Self {
        Self { next: Mutex::default(), turn: tokio::sync::Mutex::default() }
    }
}

impl<T: Copy> SharedReads<T> {
    async fn get<F: Future<Output = T>>(&self, read: impl FnOnce() -> F) -> T {
        let batch = self.next.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _turn = self.turn.lock().await;
        if let Some(value) = batch.get() {
            return *value;
        }
        {
            // Later arrivals wait for the next read. (The batch may have been replaced already,
            // if whoever started it was cancelled: then its members read without it.)
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            if Arc::ptr_eq(&next, &batch) {
                *next = Arc::default();
            }
        }
        let value = read().await;
        let _ = batch.set(value);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_through_their_redis_form() {
        let page = Page::new(b"{\"posts\":[]}\n".to_vec(), Some("</api/feed?cursor=x>; rel=\"next\"".into()));
        let back = Page::decode(&page.encode("7:top:20:first"), "7:top:20:first").unwrap();
        assert_eq!(
            (back.etag, back.link, back.body),
            (page.etag.clone(), page.link.clone(), page.body.clone())
        );
        assert!(Page::decode(&page.encode("7:top:20:first"), "8:top:20:first").is_none(), "another version");
        assert!(Page::decode(&page.encode("7:top:20:first"), "7:top:2").is_none(), "another page");
        let linkless = Page::new(b"a\nbody\n".to_vec(), None);
        assert_eq!(Page::decode(&linkless.encode("n"), "n").unwrap().body, linkless.body);
        assert_eq!(Page::new(b"same".to_vec(), None).etag, Page::new(b"same".to_vec(), None).etag);
        assert_ne!(Page::new(b"one".to_vec(), None).etag, Page::new(b"two".to_vec(), None).etag);
        assert!(Page::decode(b"no newline", "no newline").is_none());
    }

    #[tokio::test]
    async fn callers_share_the_next_read_never_the_one_in_flight() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::sync::Semaphore;

        let reads = Arc::new(SharedReads::default());
        let (started, gate) = (Arc::new(AtomicU32::new(0)), Arc::new(Semaphore::new(0)));
        // Each read takes the next number once the gate lets it finish.
        let ask = || {
            let (reads, started, gate) = (reads.clone(), started.clone(), gate.clone());
            tokio::spawn(async move {
                reads
                    .get(|| async {
                        let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                        gate.acquire().await.unwrap().forget();
                        n
                    })
                    .await
            })
        };
        let until_started = |n| {
            let started = started.clone();
            async move {
                while started.load(Ordering::SeqCst) < n {
                    tokio::task::yield_now().await;
                }
            }
        };
        let first = ask();
        until_started(1).await;
        // Asked while read 1 is in flight: both wait for it, then share read 2.
        let (second, third) = (ask(), ask());
        tokio::task::yield_now().await;
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), 1);
        let second_read = tokio::time::timeout(std::time::Duration::from_secs(5), until_started(2)).await;
        assert!(
            second_read.is_ok(),
            "those who asked while read 1 was in flight must get a read of their own"
        );
        gate.add_permits(1);
        assert_eq!((second.await.unwrap(), third.await.unwrap()), (2, 2));
        assert_eq!(started.load(Ordering::SeqCst), 2, "one read for the two of them");
    }
}
