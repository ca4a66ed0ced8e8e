//! What the webhook answers Telegram, each kind of answer mapped to its status here, once.
//! Telegram retries anything but 2xx, and waits `Retry-After` first when it is given.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::json_error;

/// Seconds Telegram is asked to wait before redelivering when a dependency is down, the chat is
/// busy or the worker is overloaded.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug)]
pub enum Answer {
    /// 200: handled now, handled before, ignored, or dead-lettered.
    Acknowledged,
    /// 404: no bot of that name here.
    UnknownBot,
    /// 401: the secret token is missing or wrong.
    Unauthorized,
    /// 503 with `Retry-After`: every permit for an update in progress is taken.
    Overloaded,
    /// 413: the body is over `BOTFLEET_MAX_BODY_BYTES`.
    TooLarge,
    /// 503 with `Retry-After`: a dependency is down, or the chat stayed busy.
    RetryLater,
    /// 500: the handling failed; Telegram redelivers, up to the dead-letter bound.
    Failed,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Answer::Acknowledged => return StatusCode::OK.into_response(),
            Answer::UnknownBot => (StatusCode::NOT_FOUND, "unknown bot"),
            Answer::Unauthorized => (StatusCode::UNAUTHORIZED, "missing or wrong secret token"),
            Answer::Overloaded => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded: too many updates in progress")
            }
            Answer::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body over the size limit"),
            Answer::RetryLater => (StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable"),
            Answer::Failed => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        let mut response = json_error(status, message);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
        }
        response
    }
}
