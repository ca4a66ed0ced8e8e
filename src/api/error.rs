//! The API's one error type: every failure of a public request maps to its status here, once.
//! Bodies are `{"error": "..."}`; a 5xx body never says why (the cause goes to the logs, and to
//! Sentry when it is a bug).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::feed::pages::PostError;
use crate::http::json_error;
use crate::store::replicas::ReadError;
use crate::types::PostId;

#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is malformed; the message says how.
    BadRequest(String),
    /// 404.
    NotFound(&'static str),
    /// 429 with `Retry-After` (seconds): the client's address is past one of its limits.
    TooMany(u64),
    /// 503 with `Retry-After: 10`: the node serves as many live streams as it may.
    Busy(&'static str),
    /// 503: the node is draining; the browser reconnects to another.
    Draining,
    /// 503 with `Retry-After: 2`: no database, or Redis, answers (the cause is logged).
    Unavailable(String),
    /// 503 with `Retry-After`: Telegram asked the bot to wait this many seconds.
    Paused(u64),
    /// 502: Telegram would not give what was asked for.
    BadGateway(&'static str),
    /// 500: a bug or a broken statement (logged and reported).
    Internal(String),
}

impl ApiError {
    pub fn redis(error: anyhow::Error) -> Self {
        Self::Unavailable(format!("redis: {error:#}"))
    }

    /// A post id from a path segment, or what is wrong with it.
    pub fn post_id(raw: &str) -> Result<PostId, Self> {
        raw.parse().map_err(|_| Self::BadRequest("post id must be a whole number".into()))
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Unavailable(_) => Self::Unavailable(error.to_string()),
            ReadError::Query(_) => Self::Internal(format!("feed read failed: {error}")),
        }
    }
}

impl From<PostError> for ApiError {
    fn from(error: PostError) -> Self {
        match error {
            PostError::NotFound => Self::NotFound("no such post"),
            PostError::Read(e) => e.into(),
        }
    }
}

fn retry_after(mut response: Response, seconds: u64) -> Response {
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::BadRequest(message) => json_error(StatusCode::BAD_REQUEST, &message),
            Self::NotFound(message) => json_error(StatusCode::NOT_FOUND, message),
            Self::TooMany(seconds) => retry_after(
                json_error(StatusCode::TOO_MANY_REQUESTS, "too many requests from this address"),
                seconds,
            ),
            Self::Busy(message) => retry_after(json_error(StatusCode::SERVICE_UNAVAILABLE, message), 10),
            Self::Draining => json_error(StatusCode::SERVICE_UNAVAILABLE, "this node is draining"),
            Self::Unavailable(cause) => {
                tracing::warn!(cause, "a public request found its dependencies unavailable");
                retry_after(json_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable"), 2)
            }
            Self::Paused(seconds) => retry_after(
                json_error(StatusCode::SERVICE_UNAVAILABLE, "media unavailable for a while"),
                seconds,
            ),
            Self::BadGateway(message) => json_error(StatusCode::BAD_GATEWAY, message),
            Self::Internal(cause) => {
                tracing::error!(cause, "a public request failed");
                crate::telemetry::report_error(&cause);
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}
