//! `GET /api/media/{post_id}`: a post's photo, fetched through the Bot API and streamed on.
//!
//! Telegram's file URLs carry the bot token, so browsers never see one: this proxy resolves the
//! post's `file_id` with `getFile`, downloads the file with the token on the server side and
//! streams the bytes. A post's file never changes, but the post may leave the feed (its author
//! banned, the post deleted), and then so must its photo: browsers, CDNs and Nginx keep it as
//! they keep a feed page, for a second at most, and then ask again with its `ETag`, which the
//! node answers with a 304 from the database alone while the post is still shown, and with a
//! 404 once it is not.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use teloxide_core::RequestError;
use teloxide_core::net::Download;
use teloxide_core::prelude::Requester;
use teloxide_core::types::FileId;

use super::ApiState;
use super::feed::{VISIBLE, cache_for_a_second, client_has};
use super::reader::{Freshness, ReadError};
use crate::http::json_error;
use crate::kv::{self, BotKeys};
use crate::settings::BotConfig;
use crate::telegram::{self, redact};

/// The Bot API clients of the bots whose media this node may fetch, by bot id, with the key of
/// each bot's pause after a 429 (kept by every process of the cluster, see the worker's flood
/// control).
pub struct MediaBots {
    bots: HashMap<i64, (teloxide_core::Bot, BotConfig, String)>,
    redis: kv::Shared,
}

impl MediaBots {
    pub fn new(
        configs: &[BotConfig],
        api_url: &url::Url,
        prefix: &str,
        redis: deadpool_redis::Pool,
    ) -> anyhow::Result<Arc<Self>> {
        let mut bots = HashMap::new();
        for config in configs {
            let pause = BotKeys::new(prefix, config.id).flood_pause();
            bots.insert(config.id, (telegram::bot(&config.token, api_url)?, config.clone(), pause));
        }
        Ok(Arc::new(Self { bots, redis: kv::Shared::new(redis) }))
    }

    /// Seconds the bot's calls stay paused after a 429, if they are (`None` also when Redis
    /// cannot tell: a 429 then pauses only this call).
    async fn paused(&self, pause_key: &str) -> Option<u64> {
        let mut conn = self.redis.get().await.ok()?;
        let wait =
            telegram::paused(&mut conn, pause_key).await.inspect_err(|_| self.redis.reset()).ok()??;
        Some(wait.as_secs() + 1)
    }
}

/// 503 with `Retry-After`: Telegram asked the bot to wait.
fn paused(seconds: u64) -> Response {
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, "media unavailable for a while");
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().map(str::to_ascii_lowercase).as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

pub async fn media(State(state): State<ApiState>, Path(id): Path<String>, request: HeaderMap) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return json_error(StatusCode::BAD_REQUEST, "post id must be a whole number");
    };
    let sql = format!(
        "SELECT p.bot_id, p.media_file_id, p.media_unique_id FROM posts p
         JOIN users u ON u.bot_id = p.bot_id AND u.user_id = p.author_id
         WHERE {VISIBLE} AND p.id = $1 AND p.media_file_id IS NOT NULL"
    );
    let rows = match state.reader.query(&sql, &[&id], Freshness::default()).await {
        Ok(rows) => rows,
        Err(ReadError::Unavailable(_)) => {
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
        }
        Err(e) => {
            tracing::error!(error = %e, "media lookup failed");
            crate::telemetry::report_error(&format!("media lookup failed: {e}"));
            return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
        }
    };
    let Some(row) = rows.first() else {
        return json_error(StatusCode::NOT_FOUND, "no such post with media");
    };
    let (bot_id, file_id, unique_id): (i64, String, Option<String>) = (row.get(0), row.get(1), row.get(2));
    // Telegram's file_unique_id is the same for the same file, whichever bot or upload: the
    // photo's version. (Rows from before it was stored go without one.)
    let etag = unique_id.map(|unique| format!("\"{unique}\""));
    let mut response = match &etag {
        Some(etag) if client_has(&request, etag) => StatusCode::NOT_MODIFIED.into_response(),
        _ => fetch(&state, bot_id, FileId(file_id), id).await,
    };
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        cache_for_a_second(response.headers_mut(), etag.as_deref());
    }
    response
}

/// The file, through the bot of the post: `getFile`, then its bytes streamed on.
async fn fetch(state: &ApiState, bot_id: i64, file_id: FileId, post: i64) -> Response {
    let Some((bot, config, pause_key)) = state.media.bots.get(&bot_id) else {
        return json_error(StatusCode::NOT_FOUND, "media of this bot is not served here");
    };
    if let Some(seconds) = state.media.paused(pause_key).await {
        return paused(seconds);
    }
    let file = match bot.get_file(file_id).await {
        Ok(file) => file,
        Err(RequestError::RetryAfter(after)) => {
            if let Ok(mut conn) = state.media.redis.get().await {
                let _ = telegram::pause(&mut conn, pause_key, after.duration()).await;
            }
            return paused(after.duration().as_secs().max(1));
        }
        Err(e) => {
            tracing::warn!(post, error = %redact(&e.to_string(), &config.token), "getFile failed");
            return json_error(StatusCode::BAD_GATEWAY, "media unavailable");
        }
    };
    let token = config.token.clone();
    let bytes = bot
        .download_file_stream(&file.path)
        .map(move |chunk| chunk.map_err(|e| std::io::Error::other(redact(&e.to_string(), &token))));
    ([(header::CONTENT_TYPE, content_type(&file.path))], Body::from_stream(bytes)).into_response()
}
