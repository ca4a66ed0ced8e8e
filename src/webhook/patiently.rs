//! Deploy-time calls are few and must succeed: they wait out what Telegram asks them to.

use std::future::IntoFuture;
use std::time::Duration;

use teloxide_core::{ApiError, RequestError};

/// Attempts at one Bot API call: the first, and those after a 429 or a conflict.
const ATTEMPTS: u32 = 4;

/// Makes `call`, waiting out a 429's `retry_after` and, after a conflict with another
/// setWebhook, a growing pause; [`ATTEMPTS`] at most.
pub async fn patiently<T, R>(call: impl Fn() -> R) -> Result<T, RequestError>
where
    R: IntoFuture<Output = Result<T, RequestError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = call().await;
        let wait = match &result {
            Err(RequestError::RetryAfter(after)) => after.duration(),
            Err(RequestError::Api(ApiError::Unknown(message))) if message.starts_with("Conflict") => {
                Duration::from_millis(200 * u64::from(attempt))
            }
            _ => return result,
        };
        if attempt == ATTEMPTS {
            return result;
        }
        tracing::warn!(wait_ms = wait.as_millis() as u64, "Telegram asked to wait; trying again");
        tokio::time::sleep(wait).await;
    }
}
