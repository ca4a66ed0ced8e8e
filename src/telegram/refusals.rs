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

/// How a call ended, as its sender must act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A 429: Telegram asked the bot to wait.
    RetryAfter,
    /// Refused for good: trying again cannot help.
    Refused,
    /// A failure that may pass (see [`is_transient`]).
    Error,
}

impl Verdict {
    pub fn of<T>(result: &Result<T, RequestError>) -> Self {
        match result {
            Ok(_) => Verdict::Ok,
            Err(RequestError::RetryAfter(_)) => Verdict::RetryAfter,
            Err(e) if is_transient(e) => Verdict::Error,
            Err(_) => Verdict::Refused,
        }
    }

    /// The bounded label of `botfleet_bot_api_calls_total`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::RetryAfter => "retry_after",
            Verdict::Refused => "refused",
            Verdict::Error => "error",
        }
    }

    /// Whether the call is done with, one way or the other (a queued message leaves the queue).
    pub fn is_final(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::Refused)
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

#[cfg(test)]
mod tests {
    use teloxide_core::types::{ChatId, Seconds};

    use super::*;

    #[test]
    fn a_call_is_done_with_when_it_went_through_or_can_never_go_through() {
        let verdict = |error: RequestError| Verdict::of::<()>(&Err(error));
        assert_eq!(Verdict::of(&Ok::<_, RequestError>(())), Verdict::Ok);
        assert_eq!(verdict(RequestError::RetryAfter(Seconds::from_seconds(3))), Verdict::RetryAfter);
        assert_eq!(verdict(RequestError::Api(ApiError::BotBlocked)), Verdict::Refused);
        assert_eq!(
            verdict(RequestError::MigrateToChatId(ChatId(-100))),
            Verdict::Refused,
            "never again there"
        );
        assert_eq!(verdict(RequestError::Api(ApiError::Unknown("Bad Gateway".into()))), Verdict::Error);
        let finals: Vec<bool> = [Verdict::Ok, Verdict::Refused, Verdict::RetryAfter, Verdict::Error]
            .map(Verdict::is_final)
            .into();
        assert_eq!(finals, [true, true, false, false]);
    }
}
