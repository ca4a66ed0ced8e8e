//! `GET /api/feed/stream`: the live feed as Server-Sent Events (see `feed::hub`).
//!
//! A browser that sends `Last-Event-ID` first gets what it missed, read back from the stream
//! (less the posts that left the feed since: deleted, or their author banned), or one
//! `event: resync` if the stream no longer reaches back that far or it missed more than
//! [`MAX_RESUME`] events, followed by the last two seconds' posts (a reloaded page 1 may be that
//! old); then the live events.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::error::ApiError;
use super::state::ApiState;
use crate::feed::hub::{Offset, RESYNC};
use crate::store;
use crate::store::replicas::Freshness;
use crate::types::PostId;

/// Most events a resume replays: past it the client reloads page 1 (`resync`), so that a
/// reconnect costs bounded work however far back its `Last-Event-ID` is.
pub const MAX_RESUME: usize = 1000;

/// How long a browser should wait before reconnecting.
const RETRY_MS: u64 = 3000;

pub async fn stream(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let hub = &state.hub;
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str().ok().and_then(Offset::parse)) {
        None => None,
        Some(Some(offset)) => Some(offset),
        Some(None) => {
            return Err(ApiError::BadRequest("Last-Event-ID is not an event id of this stream".into()));
        }
    };
    let Some(listener) = hub.admit(&state.metrics) else {
        return Err(ApiError::Busy("too many live connections on this node"));
    };
    // Admitted (subscribed) before reading back, so nothing published in between is missed;
    // and before looking at `closing`, so that a drain after the look still reaches this stream.
    if hub.closing.is_cancelled() {
        return Err(ApiError::Draining);
    }
    // What the client gets first, in one piece: the retry hint and whatever it missed.
    let mut first = format!("retry: {RETRY_MS}\n\n").into_bytes();
    let mut missed = 0;
    let mut replayed_to = last_event_id;
    if let Some(after) = last_event_id {
        state.metrics.sse_resumes.inc();
        let gap = hub.gap_after(after).await.map_err(ApiError::redis)?;
        let replay = match gap {
            true => None,
            false => hub.read_at_most(Some(after), MAX_RESUME).await.map_err(ApiError::redis)?,
        };
        // Past what can be replayed, `resync` (reload page 1), then the last seconds' posts again,
        // which the page may be too old to have (see `Hub::recent`).
        let mut events = match replay {
            Some(events) => events,
            None => {
                state.metrics.sse_resyncs.inc();
                first.extend_from_slice(RESYNC);
                missed = 1;
                hub.recent().await.map_err(ApiError::redis)?
            }
        };
        // Live events up to the last one read back are not sent again, even where it is not
        // replayed: they may reach this node's listener after the read (a Redis Cluster relays
        // a publish from node to node).
        replayed_to = events.last().map(|e| e.offset).or(replayed_to);
        // Posts deleted (or whose author was banned) since they went out are not replayed.
        let ids: Vec<PostId> = events.iter().filter_map(|e| e.post).collect();
        if !ids.is_empty() {
            let fresh = state.cache.state().await.map_or(Freshness::Unknown, |feed| feed.fresh);
            let visible = store::feed::visible(&state.reader, &ids, fresh).await?;
            events.retain(|e| e.post.is_none_or(|id| visible.contains(&id)));
        }
        missed += events.len();
        events.iter().for_each(|e| first.extend_from_slice(&e.bytes));
    }
    state.metrics.sse_events.inc_by(missed as u64);
    let opening =
        futures_util::stream::once(std::future::ready(Ok::<Bytes, std::io::Error>(Bytes::from(first))));
    let body = Body::from_stream(opening.chain(listener.events(replayed_to)));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache, no-transform"),
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response())
}
