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
use teloxide_core::net::Download;
use teloxide_core::types::FileId;

use super::error::ApiError;
use super::feed::{cache_for_a_second, client_has};
use super::state::ApiState;
use crate::store::feed::Media;
use crate::telegram::files::FileError;
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
    let etag = unique_id.as_ref().map(|unique| format!("\"{unique}\""));
    let mut response = match &etag {
        Some(etag) if client_has(&request, etag) => StatusCode::NOT_MODIFIED.into_response(),
        _ => {
            let unique = unique_id.unwrap_or_else(|| file_id.clone());
            fetch(&state, bot_id, (FileId(file_id), &unique), id).await?
        }
    };
    cache_for_a_second(response.headers_mut(), etag.as_deref());
    Ok(response)
}

/// The file, through the bot of the post: its path (`telegram::files`), then its bytes streamed
/// on.
async fn fetch(
    state: &ApiState,
    bot_id: BotId,
    (file_id, unique): (FileId, &str),
    post: PostId,
) -> Result<Response, ApiError> {
    let Some(bot) = state.media.bot(bot_id) else {
        return Err(ApiError::NotFound("media of this bot is not served here"));
    };
    let path = match state.media.path(bot, file_id, unique).await {
        Ok(path) => path,
        Err(FileError::Wait(seconds)) => return Err(ApiError::Paused(seconds)),
        Err(FileError::Failed(e)) => {
            tracing::warn!(post = post.0, error = %redact(&e.to_string(), &bot.config.token), "getFile failed");
            return Err(ApiError::BadGateway("media unavailable"));
        }
    };
    let token = bot.config.token.clone();
    let bytes = bot
        .api
        .download_file_stream(&path)
        .map(move |chunk| chunk.map_err(|e| std::io::Error::other(redact(&e.to_string(), &token))));
    Ok(([(header::CONTENT_TYPE, content_type(&path))], Body::from_stream(bytes)).into_response())
}
