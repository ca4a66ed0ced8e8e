//! Feed pages as the API serves them: newest first, by keyset cursor, each rendered once into
//! the bytes that the caches keep (`cache.rs`) and every client gets.

use serde::{Deserialize, Serialize};

use super::cache::Page;
use super::cursor::{Cursor, CursorKey};
use crate::store::feed::{self, Start};
use crate::store::replicas::{Freshness, ReadError, Reader};
use crate::types::{PostId, PostView};

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;
/// Deepest post an old-style `page=` request may reach; cursors go anywhere.
pub const MAX_PAGE_DEPTH: i64 = 1000;

#[derive(Debug, Serialize, Deserialize)]
pub struct FeedPage {
    pub posts: Vec<PostView>,
    /// Pass as `cursor` to get the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Why one post could not be served.
#[derive(Debug)]
pub enum PostError {
    /// Not published, not public, or its author banned; never cached, since it may be published
    /// later.
    NotFound,
    Read(ReadError),
}

/// Where a page after `cursor` starts.
pub fn after(cursor: Cursor) -> Start {
    Start::After(cursor.published_at, cursor.id)
}

/// The name a page is cached under (the cache adds the feed's version).
pub fn cache_name(limit: i64, start: Start) -> String {
    match start {
        Start::Newest => format!("top:{limit}:first"),
        Start::After(published_at, id) => format!("after:{limit}:{}.{id}", published_at.timestamp_micros()),
        Start::Skip(skip) => format!("top:{limit}:skip{skip}"),
    }
}

/// Reads and renders one page; `fresh` guards against lagging replicas.
pub async fn load_page(
    reader: &Reader,
    key: &CursorKey,
    limit: i64,
    start: Start,
    fresh: Freshness,
) -> Result<Page, ReadError> {
    // One more row than asked tells whether there is a next page.
    let mut posts = feed::page(reader, start, limit + 1, fresh).await?;
    let next_cursor = if posts.len() as i64 > limit {
        posts.truncate(limit as usize);
        posts.last().map(|last| key.seal(Cursor { published_at: last.published_at, id: last.id }))
    } else {
        None
    };
    // Cursors are base64url and dots, so they need no escaping inside the URL.
    let link =
        next_cursor.as_ref().map(|next| format!("</api/feed?limit={limit}&cursor={next}>; rel=\"next\""));
    let body = serde_json::to_vec(&FeedPage { posts, next_cursor })
        .map_err(|e| ReadError::Unavailable(format!("encoding a page: {e}")))?;
    Ok(Page::new(body, link))
}

/// Reads and renders one visible post.
pub async fn load_post(reader: &Reader, id: PostId, fresh: Freshness) -> Result<Page, PostError> {
    let post = feed::post(reader, id, fresh).await.map_err(PostError::Read)?.ok_or(PostError::NotFound)?;
    let body = serde_json::to_vec(&post)
        .map_err(|e| PostError::Read(ReadError::Unavailable(format!("encoding a post: {e}"))))?;
    Ok(Page::new(body, None))
}
