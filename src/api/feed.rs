//! `GET /api/feed` (newest first, keyset pagination) and `GET /api/posts/{id}`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio_postgres::Row;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ApiState;
use super::cache::Page;
use super::cursor::Cursor;
use super::reader::{Freshness, ReadError};
use crate::feed::{Author, PostView};
use crate::http::json_error;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

const POST_COLUMNS: &str = "p.id, p.bot_id, p.text, p.media_file_id IS NOT NULL AS has_media, p.published_at,
     u.first_name, u.username";
/// What the public may see: published, public, and not by a banned author.
pub(super) const VISIBLE: &str = "p.status = 'published' AND p.is_public AND NOT u.is_banned";

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

#[derive(Debug, Serialize, Deserialize)]
pub struct FeedPage {
    pub posts: Vec<PostView>,
    /// Pass as `cursor` to get the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    limit: Option<String>,
    cursor: Option<String>,
    /// 1-based page number, for the seed's old clients; bounded, so never a long OFFSET scan.
    page: Option<String>,
}

/// Deepest post an old-style `page=` request may reach; cursors go anywhere.
pub const MAX_PAGE_DEPTH: i64 = 1000;

/// Where a page starts.
#[derive(Clone, Copy)]
enum Start {
    Newest,
    After(Cursor),
    /// Rows to skip (from `page=`), at most `MAX_PAGE_DEPTH`.
    Skip(i64),
}

pub async fn page(
    State(state): State<ApiState>,
    query: Result<Query<FeedQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    // A query axum cannot read (a parameter given twice) gets the same JSON error as the rest.
    let Ok(Query(query)) = query else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid query: give limit, cursor and page at most once each",
        );
    };
    let limit = match query.limit.as_deref().map(str::parse::<i64>) {
        None => DEFAULT_LIMIT,
        Some(Ok(limit)) if (1..=MAX_LIMIT).contains(&limit) => limit,
        Some(_) => return json_error(StatusCode::BAD_REQUEST, "limit must be a whole number from 1 to 100"),
    };
    let start = match (query.cursor.as_deref(), query.page.as_deref()) {
        (Some(_), Some(_)) => {
            return json_error(StatusCode::BAD_REQUEST, "use either cursor or page, not both");
        }
        (Some(cursor), None) => match Cursor::decode(cursor) {
            Ok(cursor) => Start::After(cursor),
            Err(_) => return json_error(StatusCode::BAD_REQUEST, "invalid cursor"),
        },
        (None, Some(page)) => match page.parse::<i64>() {
            Ok(page) if page >= 1 && (page - 1).saturating_mul(limit) < MAX_PAGE_DEPTH => {
                Start::Skip((page - 1) * limit)
            }
            _ => {
                let message = format!(
                    "page must be a whole number from 1, within the newest {MAX_PAGE_DEPTH} posts; use cursor beyond"
                );
                return json_error(StatusCode::BAD_REQUEST, &message);
            }
        },
        (None, None) => Start::Newest,
    };
    let name = match start {
        Start::Newest => format!("{limit}:first"),
        Start::After(cursor) => format!("{limit}:{}", cursor.encode()),
        Start::Skip(skip) => format!("{limit}:skip{skip}"),
    };
    let page = match state.cache.state().await {
        Some(feed) => {
            // Only pages after a cursor keep their content while new posts arrive.
            let version = match start {
                Start::After(_) => feed.removals,
                Start::Newest | Start::Skip(_) => feed.generation,
            };
            let kind = if matches!(start, Start::After(_)) { "after" } else { "top" };
            let name = format!("{kind}:{name}");
            state.cache.get(version, &name, || load_page(&state, limit, start, feed.fresh)).await
        }
        // Redis cannot say what is current: serve straight from the database, uncached.
        None => load_page(&state, limit, start, Freshness::default()).await.map(Arc::new),
    };
    match page {
        Ok(page) => respond(&page, &headers),
        Err(e) => read_failed(e),
    }
}

/// Reads one page from the database; `newest` guards against lagging replicas.
async fn load_page(state: &ApiState, limit: i64, start: Start, fresh: Freshness) -> Result<Page, ReadError> {
    // One more row than asked tells whether there is a next page.
    let fetch = limit + 1;
    let from = format!(
        "SELECT {POST_COLUMNS} FROM posts p JOIN users u ON u.bot_id = p.bot_id AND u.user_id = p.author_id"
    );
    let order = "ORDER BY p.published_at DESC, p.id DESC";
    let rows = match start {
        Start::Newest => {
            let sql = format!("{from} WHERE {VISIBLE} {order} LIMIT $1");
            state.reader.query(&sql, &[&fetch], fresh).await?
        }
        Start::After(cursor) => {
            let sql =
                format!("{from} WHERE {VISIBLE} AND (p.published_at, p.id) < ($1, $2) {order} LIMIT $3");
            state.reader.query(&sql, &[&cursor.published_at, &cursor.id, &fetch], fresh).await?
        }
        Start::Skip(skip) => {
            let sql = format!("{from} WHERE {VISIBLE} {order} LIMIT $1 OFFSET $2");
            state.reader.query(&sql, &[&fetch, &skip], fresh).await?
        }
    };
    let mut posts: Vec<PostView> = rows.iter().map(post_view).collect();
    let next_cursor = if posts.len() as i64 > limit {
        posts.truncate(limit as usize);
        posts.last().map(|last| Cursor { published_at: last.published_at, id: last.id }.encode())
    } else {
        None
    };
    // Cursors are base64url, so they need no escaping inside the URL.
    let link =
        next_cursor.as_ref().map(|next| format!("</api/feed?limit={limit}&cursor={next}>; rel=\"next\""));
    let body = serde_json::to_vec(&FeedPage { posts, next_cursor })
        .map_err(|e| ReadError::Unavailable(format!("encoding a page: {e}")))?;
    Ok(Page::new(body, link))
}

/// The most of a second an answer may still be served by Nginx's cache after the node made it.
const EDGE_CACHE: Duration = Duration::from_millis(800);

/// How long Nginx's cache may keep an answer made `now`, as `X-Accel-Expires` (which Nginx reads
/// and does not pass on). Nginx counts whole seconds and serves an entry "valid until second S"
/// until S ends, so an answer is kept until the end of its own second, and only when at most
/// `EDGE_CACHE` of that second is left: through Nginx, a new post is on page 1 within a second
/// (invariant 6). Answers made earlier in a second go through uncached.
fn edge_expiry(now: SystemTime) -> HeaderValue {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(1) - Duration::from_nanos(since_epoch.subsec_nanos().into());
    let uncached = HeaderValue::from_static("0");
    if left > EDGE_CACHE {
        return uncached;
    }
    HeaderValue::try_from(format!("@{}", since_epoch.as_secs())).unwrap_or(uncached)
}

/// Whether the request's `If-None-Match` names `etag` (or any version at all).
pub(super) fn client_has(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
}

/// Lets browsers and shared caches keep an answer for a second (a new post must show within
/// one, and a removed one must go), Nginx's as `edge_expiry` says, then revalidate by `etag`.
pub(super) fn cache_for_a_second(headers: &mut HeaderMap, etag: Option<&str>) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=1"));
    headers.insert("x-accel-expires", edge_expiry(SystemTime::now()));
    if let Some(etag) = etag.and_then(|etag| HeaderValue::from_str(etag).ok()) {
        headers.insert(header::ETAG, etag);
    }
}

/// 304 when the client has this very page, else the page; either way cached for a second.
fn respond(page: &Page, headers: &HeaderMap) -> Response {
    let fresh = client_has(headers, &page.etag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], page.body.clone()).into_response()
    };
    let headers = response.headers_mut();
    cache_for_a_second(headers, Some(&page.etag));
    if let Some(link) = page.link.as_deref().and_then(|l| HeaderValue::from_str(l).ok())
        && !fresh
    {
        headers.insert(header::LINK, link);
    }
    response
}

/// Why one post could not be served.
enum PostError {
    /// Not published, not public, or its author banned; never cached, since it may be published
    /// later.
    NotFound,
    Read(ReadError),
}

pub async fn post(State(state): State<ApiState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return json_error(StatusCode::BAD_REQUEST, "post id must be a whole number");
    };
    // A published post changes only when posts are removed: cache it under that version.
    let post = match state.cache.state().await {
        Some(feed) => {
            state.cache.get(feed.removals, &format!("post:{id}"), || load_post(&state, id, feed.fresh)).await
        }
        None => load_post(&state, id, Freshness::default()).await.map(Arc::new),
    };
    match post {
        Ok(page) => respond(&page, &headers),
        Err(PostError::NotFound) => json_error(StatusCode::NOT_FOUND, "no such post"),
        Err(PostError::Read(e)) => read_failed(e),
    }
}

async fn load_post(state: &ApiState, id: i64, fresh: Freshness) -> Result<Page, PostError> {
    let sql = format!(
        "SELECT {POST_COLUMNS} FROM posts p
         JOIN users u ON u.bot_id = p.bot_id AND u.user_id = p.author_id
         WHERE {VISIBLE} AND p.id = $1"
    );
    let rows = state.reader.query(&sql, &[&id], fresh).await.map_err(PostError::Read)?;
    let row = rows.first().ok_or(PostError::NotFound)?;
    let body = serde_json::to_vec(&post_view(row))
        .map_err(|e| PostError::Read(ReadError::Unavailable(format!("encoding a post: {e}"))))?;
    Ok(Page::new(body, None))
}

fn read_failed(error: ReadError) -> Response {
    match error {
        ReadError::Unavailable(_) => {
            tracing::warn!(error = %error, "feed read: no database reachable");
            let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            response
        }
        ReadError::Query(_) => {
            tracing::error!(error = %error, "feed read failed");
            crate::telemetry::report_error(&format!("feed read failed: {error}"));
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expiry_at(since_epoch: Duration) -> HeaderValue {
        edge_expiry(UNIX_EPOCH + since_epoch)
    }

    #[test]
    fn nginx_may_keep_an_answer_to_the_end_of_its_second_only_when_little_of_it_is_left() {
        let second = Duration::from_secs(1_795_517_484);
        assert_eq!(expiry_at(second), "0");
        assert_eq!(expiry_at(second + Duration::from_millis(199)), "0");
        assert_eq!(expiry_at(second + Duration::from_millis(200)), "@1795517484");
        assert_eq!(expiry_at(second + Duration::from_nanos(999_999_999)), "@1795517484");
    }
}
