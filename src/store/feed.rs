//! The feed's reads: what the public may see, newest first, by keyset. Every read goes through
//! [`Reader`], so it comes from a replica only when that replica is current.

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::replicas::{Freshness, ReadError, Reader};
use crate::types::{Author, BotId, PostId, PostView};

const POST_COLUMNS: &str = "p.id, p.bot_id, p.text, p.media_file_id IS NOT NULL AS has_media, p.published_at,
     u.first_name, u.username";
const FROM: &str = "FROM posts p JOIN users u ON u.bot_id = p.bot_id AND u.user_id = p.author_id";
/// What the public may see: published, public, and not by a banned author.
const VISIBLE: &str = "p.status = 'published' AND p.is_public AND NOT u.is_banned";
const NEWEST_FIRST: &str = "ORDER BY p.published_at DESC, p.id DESC";

/// Where a page starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Newest,
    /// After the post published at that moment with that id (a cursor).
    After(DateTime<Utc>, PostId),
    /// Rows to skip, for the seed's `page=`: the caller bounds it.
    Skip(i64),
}

fn post_view(row: &Row) -> PostView {
    PostView {
        id: row.get("id"),
        bot_id: row.get("bot_id"),
        text: row.get("text"),
        has_media: row.get("has_media"),
        published_at: row.get("published_at"),
        author: Author { first_name: row.get("first_name"), username: row.get("username") },
    }
}

/// Up to `limit` visible posts from `start`, newest first.
pub async fn page(
    reader: &Reader,
    start: Start,
    limit: i64,
    fresh: Freshness,
) -> Result<Vec<PostView>, ReadError> {
    let rows = match start {
        Start::Newest => {
            let sql = format!("SELECT {POST_COLUMNS} {FROM} WHERE {VISIBLE} {NEWEST_FIRST} LIMIT $1");
            reader.query(&sql, &[&limit], fresh).await?
        }
        Start::After(published_at, id) => {
            let sql = format!(
                "SELECT {POST_COLUMNS} {FROM} WHERE {VISIBLE} AND (p.published_at, p.id) < ($1, $2) {NEWEST_FIRST} LIMIT $3"
            );
            reader.query(&sql, &[&published_at, &id, &limit], fresh).await?
        }
        Start::Skip(skip) => {
            let sql =
                format!("SELECT {POST_COLUMNS} {FROM} WHERE {VISIBLE} {NEWEST_FIRST} LIMIT $1 OFFSET $2");
            reader.query(&sql, &[&limit, &skip], fresh).await?
        }
    };
    Ok(rows.iter().map(post_view).collect())
}

/// One visible post.
pub async fn post(reader: &Reader, id: PostId, fresh: Freshness) -> Result<Option<PostView>, ReadError> {
    let sql = format!("SELECT {POST_COLUMNS} {FROM} WHERE {VISIBLE} AND p.id = $1");
    Ok(reader.query(&sql, &[&id], fresh).await?.first().map(post_view))
}

/// Which of `ids` are still visible (not deleted, not by a banned author).
pub async fn visible(
    reader: &Reader,
    ids: &[PostId],
    fresh: Freshness,
) -> Result<std::collections::HashSet<PostId>, ReadError> {
    let sql = format!("SELECT p.id {FROM} WHERE {VISIBLE} AND p.id = ANY($1)");
    Ok(reader.query(&sql, &[&ids], fresh).await?.iter().map(|row| row.get(0)).collect())
}

/// A visible post's photo as Telegram knows it.
pub struct Media {
    pub bot_id: BotId,
    pub file_id: String,
    /// Telegram's `file_unique_id`: the same for the same file (absent on rows from before it
    /// was stored).
    pub unique_id: Option<String>,
}

/// The photo of a visible post, if it has one.
pub async fn media(reader: &Reader, id: PostId) -> Result<Option<Media>, ReadError> {
    let sql = format!(
        "SELECT p.bot_id, p.media_file_id, p.media_unique_id {FROM}
         WHERE {VISIBLE} AND p.id = $1 AND p.media_file_id IS NOT NULL"
    );
    let rows = reader.query(&sql, &[&id], Freshness::Any).await?;
    Ok(rows.first().map(|row| Media { bot_id: row.get(0), file_id: row.get(1), unique_id: row.get(2) }))
}

/// The key feed cursors are signed with (made by migration 0008), read from the primary.
pub async fn cursor_key(reader: &Reader) -> Result<Vec<u8>, ReadError> {
    let unavailable =
        |e: &dyn std::fmt::Display| ReadError::Unavailable(format!("reading the cursor key: {e}"));
    let client = reader.primary().get().await.map_err(|e| unavailable(&e))?;
    let row = client.query_opt("SELECT key FROM api_keys WHERE name = 'cursor'", &[]).await;
    match row.map_err(|e| unavailable(&e))? {
        Some(row) => Ok(row.get(0)),
        None => Err(unavailable(&"no row in api_keys: run `botfleet migrate`")),
    }
}
