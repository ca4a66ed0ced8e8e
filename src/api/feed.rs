//! `GET /api/feed` (newest first, keyset pagination) and `GET /api/posts/{id}`: requests are
//! read here, pages made by `feed::pages` and kept by `feed::cache`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::state::ApiState;
use crate::feed::cache::Page;
use crate::feed::cursor::CursorKey;
use crate::feed::pages::{self, DEFAULT_LIMIT, MAX_LIMIT, MAX_PAGE_DEPTH};
use crate::store::feed::Start;
use crate::store::replicas::Freshness;

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    limit: Option<String>,
    cursor: Option<String>,
    /// 1-based page number, for the seed's old clients; bounded, so never a long OFFSET scan.
    page: Option<String>,
}

impl FeedQuery {
    /// The page size and where the page starts, or what is wrong with the query.
    fn parse(&self, key: &CursorKey) -> Result<(i64, Start), ApiError> {
        let bad = |message: &str| ApiError::BadRequest(message.to_owned());
        let limit = match self.limit.as_deref().map(str::parse::<i64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(limit)) if (1..=MAX_LIMIT).contains(&limit) => limit,
            Some(_) => return Err(bad("limit must be a whole number from 1 to 100")),
        };
        let start = match (self.cursor.as_deref(), self.page.as_deref()) {
            (Some(_), Some(_)) => return Err(bad("use either cursor or page, not both")),
            (Some(cursor), None) => pages::after(key.open(cursor).map_err(|_| bad("invalid cursor"))?),
            (None, Some(page)) => match page.parse::<i64>() {
                Ok(page) if page >= 1 && (page - 1).saturating_mul(limit) < MAX_PAGE_DEPTH => {
                    Start::Skip((page - 1) * limit)
                }
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "page must be a whole number from 1, within the newest {MAX_PAGE_DEPTH} posts; use cursor beyond"
                    )));
                }
            },
            (None, None) => Start::Newest,
        };
        Ok((limit, start))
    }
}

pub async fn page(
    State(state): State<ApiState>,
    query: Result<Query<FeedQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A query axum cannot read (a parameter given twice) gets the same JSON error as the rest.
    let Ok(Query(query)) = query else {
        return Err(ApiError::BadRequest(
            "invalid query: give limit, cursor and page at most once each".into(),
        ));
    };
    let key = state.cursor_key().await?;
    let (limit, start) = query.parse(key)?;
    let reader = &state.reader;
    let page = match state.cache.state().await {
        Some(feed) => {
            // Only pages after a cursor keep their content while new posts arrive.
            let version = if matches!(start, Start::After(..)) { feed.removals } else { feed.generation };
            let name = pages::cache_name(limit, start);
            state
                .cache
                .get(version, &name, || pages::load_page(reader, key, limit, start, feed.fresh))
                .await?
        }
        // Redis cannot say what is current: serve straight from the database, uncached.
        None => Arc::new(pages::load_page(reader, key, limit, start, Freshness::Any).await?),
    };
    Ok(respond(&page, &headers))
}

pub async fn post(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = ApiError::post_id(&id)?;
    let reader = &state.reader;
    // A published post changes only when posts are removed: cache it under that version.
    let post = match state.cache.state().await {
        Some(feed) => {
            let load = || pages::load_post(reader, id, feed.fresh);
            state.cache.get(feed.removals, &format!("post:{id}"), load).await?
        }
        None => Arc::new(pages::load_post(reader, id, Freshness::Any).await?),
    };
    Ok(respond(&post, &headers))
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
pub fn client_has(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
}

/// Lets browsers and shared caches keep an answer for a second (a new post must show within
/// one, and a removed one must go), Nginx's as `edge_expiry` says, then revalidate by `etag`.
pub fn cache_for_a_second(headers: &mut HeaderMap, etag: Option<&str>) {
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
