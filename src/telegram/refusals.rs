//! What Telegram's answers mean for the sender: a failure that may pass is tried again (by the
//! flood control, then by Telegram's redelivery or the outbox); a refusal for good (blocked by
//! the user, chat not found, a group that moved) never is, and a user who is gone for the bot
//! is marked unreachable so that broadcasts skip them.

use teloxide_core::{ApiError, RequestError};

use crate::kv::{BotKeys, Conn};
use crate::store::StoreError;
use crate::store::user_cache::Users;
use crate::types::{BotId, ChatId};

/// A failure that may pass: the network, an answer that is not Telegram's JSON (a proxy in
/// trouble), or Telegram's own 5xx (teloxide gives it no code of its own, only its text, and
/// returns it only after waiting 10 s itself).
pub fn is_transient(error: &RequestError) -> bool {
    const SERVER_ERRORS: [&str; 4] =
        ["Internal Server Error", "Bad Gateway", "Service Unavailable", "Gateway Timeout"];
    match error {
        RequestError::Network(_) | RequestError::InvalidJson { .. } | RequestError::Io(_) => true,
        RequestError::Api(ApiError::Unknown(text)) => SERVER_ERRORS.iter().any(|e| text.starts_with(e)),
        _ => false,
    }
}

/// The bounded metric label of a call's result: `ok`, `retry_after`, `refused` (for good) or
/// `error` (may pass).
pub fn label<T>(result: &Result<T, RequestError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(RequestError::RetryAfter(_)) => "retry_after",
        Err(e) if is_transient(e) => "error",
        Err(_) => "refused",
    }
}

/// After Telegram refused a message to `chat` for good because the user blocked the bot,
/// deleted their account, or the chat is gone, a private chat's user is marked unreachable
/// (see [`Users::unreachable`]).
pub async fn refused(
    users: &Users,
    conn: &mut Conn,
    keys: &BotKeys,
    (bot_id, chat): (BotId, ChatId),
    error: &RequestError,
) -> Result<(), StoreError> {
    let gone = matches!(
        error,
        RequestError::Api(ApiError::BotBlocked | ApiError::UserDeactivated | ApiError::ChatNotFound)
    );
    if let Some(user) = chat.private_user()
        && gone
    {
        users.unreachable(conn, keys, (bot_id, user)).await?;
    }
    Ok(())
}
