//! `GET /api/media/{post_id}`: a post's photo, fetched through the Bot API and streamed on.
//!
//! Telegram's file URLs carry the bot token, so browsers never see one: this proxy resolves the
//! post's `file_id` with `getFile`, downloads the file with the token on the server side and
//! streams the bytes. A post's file never changes, but the post may leave the feed (its author
//! banned, the post deleted), and then so must its photo: browsers, CDNs and Nginx keep it as
//! they keep a feed page, for a second at most, and then ask again with its `ETag`, which the
//! node answers with a 304 from the database alone while the post is still shown, and with a
//! 404 once it is not.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use teloxide_core::RequestError;
use teloxide_core::net::Download;
use teloxide_core::prelude::Requester;
use teloxide_core::types::FileId;

use super::error::ApiError;
use super::feed::{cache_for_a_second, client_has};
use super::state::ApiState;
use crate::store::feed::Media;
use crate::telegram::redact;
use crate::types::{BotId, PostId};

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

pub async fn media(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    request: HeaderMap,
) -> Result<Response, ApiError> {
    let id = ApiError::post_id(&id)?;
    let media = crate::store::feed::media(&state.reader, id).await?;
    let Some(Media { bot_id, file_id, unique_id }) = media else {
        return Err(ApiError::NotFound("no such post with media"));
    };
    // Telegram's file_unique_id is the same for the same file, whichever bot or upload: the
    // photo's version. (Rows from before it was stored go without one.)
    let etag = unique_id.map(|unique| format!("\"{unique}\""));
    let mut response = match &etag {
        Some(etag) if client_has(&request, etag) => StatusCode::NOT_MODIFIED.into_response(),
        _ => fetch(&state, bot_id, FileId(file_id), id).await?,
    };
    cache_for_a_second(response.headers_mut(), etag.as_deref());
    Ok(response)
}

/// The file, through the bot of the post: `getFile`, then its bytes streamed on.
async fn fetch(state: &ApiState, bot_id: BotId, file_id: FileId, post: PostId) -> Result<Response, ApiError> {
    let Some((bot, config, pause_key)) = state.media.bot(bot_id) else {
        return Err(ApiError::NotFound("media of this bot is not served here"));
    };
    if let Some(seconds) = state.media.paused(pause_key).await {
        return Err(ApiError::Paused(seconds));
    }
    let file = match bot.get_file(file_id).await {
        Ok(file) => file,
        Err(RequestError::RetryAfter(after)) => {
            state.media.pause(pause_key, after.duration()).await;
            return Err(ApiError::Paused(after.duration().as_secs().max(1)));
        }
        Err(e) => {
            tracing::warn!(post = post.0, error = %redact(&e.to_string(), &config.token), "getFile failed");
            return Err(ApiError::BadGateway("media unavailable"));
        }
    };
    let token = config.token.clone();
    let bytes = bot
        .download_file_stream(&file.path)
        .map(move |chunk| chunk.map_err(|e| std::io::Error::other(redact(&e.to_string(), &token))));
    Ok(([(header::CONTENT_TYPE, content_type(&file.path))], Body::from_stream(bytes)).into_response())
}
