//! Values every floor passes around. Each newtype can only hold a valid value: parse once at
//! the edge, then pass the type around. The published post's shape lives here too, as the one
//! thing the store reads, the feed serves and the stream carries (`feed` re-exports it).

use std::fmt;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// Declares an id newtype: an `i64` as Telegram and Postgres have it, which cannot be passed
/// where another kind of id is wanted. `.0` is for the edges (SQL parameters, Bot API calls).
macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        /// A whole number, as users type ids and paths carry them.
        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;

            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                raw.parse().map(Self)
            }
        }

        /// Stored as `bigint`.
        impl<'a> FromSql<'a> for $name {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                i64::from_sql(ty, raw).map(Self)
            }

            fn accepts(ty: &Type) -> bool {
                <i64 as FromSql>::accepts(ty)
            }
        }

        impl ToSql for $name {
            fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.0.to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <i64 as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        /// Passed to Redis as the number.
        impl redis::ToRedisArgs for $name {
            fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
                self.0.write_redis_args(out)
            }
        }
    };
}

id!(
    /// Telegram's id of a bot: its token's prefix. Rows and Redis keys are namespaced by it.
    BotId
);
id!(
    /// A chat. A private chat's id is its user's; groups' are negative.
    ChatId
);
id!(
    /// A Telegram user (Telegram's ids fit in 52 bits, so `i64` holds every one).
    UserId
);
id!(
    /// The transport's id of an update: unique per bot while Telegram keeps counting.
    UpdateId
);
id!(
    /// A post, as Postgres numbers them.
    PostId
);
id!(
    /// A message within its chat.
    MessageId
);

impl ChatId {
    /// A private chat's user (a private chat's id is its user's); `None` for groups.
    pub fn private_user(self) -> Option<UserId> {
        (self.0 > 0).then_some(UserId(self.0))
    }
}

impl UserId {
    /// The user's private chat with the bot.
    pub fn private_chat(self) -> ChatId {
        ChatId(self.0)
    }
}

impl From<teloxide_core::types::ChatId> for ChatId {
    fn from(id: teloxide_core::types::ChatId) -> Self {
        Self(id.0)
    }
}

impl From<ChatId> for teloxide_core::types::Recipient {
    fn from(id: ChatId) -> Self {
        teloxide_core::types::ChatId(id.0).into()
    }
}

impl From<&teloxide_core::types::User> for UserId {
    fn from(user: &teloxide_core::types::User) -> Self {
        // Telegram's ids fit in 52 bits.
        Self(user.id.0 as i64)
    }
}

impl From<teloxide_core::types::MessageId> for MessageId {
    fn from(id: teloxide_core::types::MessageId) -> Self {
        Self(i64::from(id.0))
    }
}

impl From<teloxide_core::types::UpdateId> for UpdateId {
    fn from(id: teloxide_core::types::UpdateId) -> Self {
        Self(i64::from(id.0))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Author {
    pub first_name: String,
    pub username: Option<String>,
}

/// A published post as the API serves it, and as SSE events carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PostView {
    pub id: PostId,
    pub bot_id: BotId,
    pub text: String,
    pub has_media: bool,
    pub published_at: DateTime<Utc>,
    pub author: Author,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("bot name {0:?} must be 1-32 characters of a-z, 0-9 and _")]
    BotName(String),
    #[error("webhook secret must be 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)")]
    WebhookSecret,
}

/// A bot's short name: the key of its settings and the last segment of its webhook path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BotName(String);

impl BotName {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let valid = (1..=32).contains(&raw.len())
            && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid { Ok(Self(raw.to_owned())) } else { Err(DomainError::BotName(raw.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token`. Never printed; compared
/// in constant time.
#[derive(Clone)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let valid = (1..=256).contains(&raw.len())
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid { Ok(Self(raw.to_owned())) } else { Err(DomainError::WebhookSecret) }
    }

    /// Whether `presented` is this secret. The time taken depends only on the lengths, never on
    /// where the first differing byte is.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// The text of a post: 10 to 2000 characters (Unicode scalar values) after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostText(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PostTextError {
    #[error("too short: a post needs at least {min} characters, this one has {0}", min = PostText::MIN_CHARS)]
    TooShort(usize),
    #[error("too long: a post may have at most {max} characters, this one has {0}", max = PostText::MAX_CHARS)]
    TooLong(usize),
}

impl PostText {
    pub const MIN_CHARS: usize = 10;
    pub const MAX_CHARS: usize = 2000;

    pub fn parse(raw: &str) -> Result<Self, PostTextError> {
        let text = raw.trim();
        let chars = text.chars().count();
        if chars < Self::MIN_CHARS {
            Err(PostTextError::TooShort(chars))
        } else if chars > Self::MAX_CHARS {
            Err(PostTextError::TooLong(chars))
        } else {
            Ok(Self(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_text_bounds_count_characters_not_bytes() {
        assert_eq!(PostText::parse("short"), Err(PostTextError::TooShort(5)));
        assert_eq!(PostText::parse("   123456789   "), Err(PostTextError::TooShort(9)));
        assert_eq!(PostText::parse("1234567890").unwrap().as_str(), "1234567890");
        // Ten Cyrillic letters are 20 bytes but 10 characters.
        assert!(PostText::parse("абвгдежзий").is_ok());
        assert!(PostText::parse(&"x".repeat(2000)).is_ok());
        assert_eq!(PostText::parse(&"ы".repeat(2001)), Err(PostTextError::TooLong(2001)));
    }

    #[test]
    fn webhook_secret_rules_and_comparison() {
        let secret = WebhookSecret::parse("abc_DEF-123").unwrap();
        assert!(secret.matches(b"abc_DEF-123"));
        assert!(!secret.matches(b"abc_DEF-124"));
        assert!(!secret.matches(b"abc_DEF-1234"));
        assert!(!secret.matches(b""));
        assert!(WebhookSecret::parse("").is_err());
        assert!(WebhookSecret::parse("with space").is_err());
        assert!(WebhookSecret::parse(&"a".repeat(257)).is_err());
        assert_eq!(format!("{secret:?}"), "WebhookSecret([redacted])");
    }

    #[test]
    fn bot_names() {
        assert!(BotName::parse("main_2").is_ok());
        assert!(BotName::parse("Main").is_err());
        assert!(BotName::parse("").is_err());
        assert!(BotName::parse(&"a".repeat(33)).is_err());
    }
}
