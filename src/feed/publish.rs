//! Publishing to the feed, and taking posts off it. Published posts go out to the API nodes in
//! batches (`crate::batch`): the posts that committed together are published together, in one
//! call of `publish_post.lua`, rather than one call each. Every caller has committed its post
//! before it asks, and gets its answer once its post is out, so a reply never announces a post
//! the feed does not have yet.

use std::sync::Arc;
use std::time::Duration;

use crate::batch::Batches;
use crate::kv::{Conn, FeedKeys, scripts};
use crate::types::PostView;

/// How long Redis remembers that a post went out, so a redelivery publishes nothing twice.
const PUBLISHED_MEMORY_MS: u64 = 24 * 3600 * 1000;

/// Most posts in one call.
const MAX_BATCH: usize = 64;

/// Whether a post went out now (its stream offset) or before (`None`); an error is Redis'.
type Published = Result<Option<String>, String>;

/// A post to publish, the connection to publish it on, and the WAL position after its commit.
type Request = (Conn, PostView, i64);

#[derive(Clone)]
pub struct Publisher(Batches<Request, Published>);

impl Publisher {
    /// Starts the publisher; it ends once every clone of it is dropped.
    pub fn start(keys: Arc<FeedKeys>, stream_len: u64) -> Self {
        Self(Batches::start(MAX_BATCH, Duration::ZERO, move |requests: Vec<Request>| {
            let keys = keys.clone();
            async move {
                // Every request carries a clone of the process's one Redis connection.
                let Some(mut conn) = requests.first().map(|(conn, ..)| conn.clone()) else {
                    return Vec::new();
                };
                let position = requests.iter().map(|(.., position)| *position).max().unwrap_or(0);
                let posts: Vec<PostView> = requests.into_iter().map(|(_, post, _)| post).collect();
                match publish(&mut conn, &keys, &posts, stream_len, position).await {
                    Ok(offsets) => offsets.into_iter().map(Ok).collect(),
                    Err(e) => posts.iter().map(|_| Err(format!("{e:#}"))).collect(),
                }
            }
        }))
    }

    /// Publishes a committed post; `None` if it went out before.
    pub async fn publish(
        &self,
        conn: Conn,
        post: PostView,
        wal_position: i64,
    ) -> anyhow::Result<Option<String>> {
        let answer = self.0.submit((conn, post, wal_position)).await;
        answer.ok_or_else(|| anyhow::anyhow!("the publisher stopped"))?.map_err(anyhow::Error::msg)
    }
}

/// Publishes committed posts: stream entries, live messages, the page-cache generation and the
/// WAL position replicas must have replayed (the primary's after the posts' commits; ids are not
/// commit order), in one call (`publish_post.lua`). Returns each post's stream offset, or `None`
/// for a post that went out before.
pub async fn publish(
    conn: &mut Conn,
    keys: &FeedKeys,
    posts: &[PostView],
    stream_len: u64,
    wal_position: i64,
) -> anyhow::Result<Vec<Option<String>>> {
    let mut script = scripts::PUBLISH_POST.key(&keys.stream);
    script.key(&keys.generation).key(&keys.wal_position);
    script.arg(&keys.channel).arg(stream_len).arg(PUBLISHED_MEMORY_MS).arg(wal_position);
    for post in posts {
        let (published, bit) = keys.published(post.id);
        script.key(published).arg(serde_json::to_string(post)?).arg(post.id).arg(bit);
    }
    Ok(script.invoke_async(conn).await?)
}

/// Posts left the feed (deleted, or their author banned or unbanned): every cached page is stale,
/// those after a cursor too (`feed_removed.lua`). `wal_position` is the primary's WAL position
/// after the removal committed: replicas that have not replayed that far are not read from.
pub async fn invalidate(conn: &mut Conn, keys: &FeedKeys, wal_position: i64) -> anyhow::Result<()> {
    scripts::FEED_REMOVED
        .key(&keys.generation)
        .key(&keys.removals)
        .key(&keys.wal_position)
        .arg(wal_position)
        .invoke_async::<i64>(conn)
        .await?;
    Ok(())
}
