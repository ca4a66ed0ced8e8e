//! The public feed's shared model, and publishing to it: what workers send and API nodes serve.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::kv::{Conn, FeedKeys, scripts};

/// How long Redis remembers that a post went out, so a redelivery publishes nothing twice.
const PUBLISHED_MEMORY_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Author {
    pub first_name: String,
    pub username: Option<String>,
}

/// A published post as the API serves it, and as SSE events carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PostView {
    pub id: i64,
    pub bot_id: i64,
    pub text: String,
    pub has_media: bool,
    pub published_at: DateTime<Utc>,
    pub author: Author,
}

/// Publishes committed posts: stream entries, live messages and the page-cache generation, in
/// one call (`publish_post.lua`). Returns each post's stream offset, or `None` for a post that
/// went out before.
pub async fn publish(
    conn: &mut Conn,
    keys: &FeedKeys,
    posts: &[PostView],
    stream_len: u64,
) -> anyhow::Result<Vec<Option<String>>> {
    let mut script = scripts::PUBLISH_POST.key(&keys.stream);
    script.key(&keys.generation).key(&keys.newest);
    script.arg(&keys.channel).arg(stream_len).arg(PUBLISHED_MEMORY_MS);
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
        .key(&keys.removal_lsn)
        .arg(wal_position)
        .invoke_async::<i64>(conn)
        .await?;
    Ok(())
}
