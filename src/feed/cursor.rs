//! Opaque feed cursors: the keyset position `(published_at, id)` of the last post of a page,
//! base64url-encoded so clients treat it as a token, not as something to construct.

use crate::types::PostId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

const VERSION: &str = "v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub published_at: DateTime<Utc>,
    pub id: PostId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cursor")]
pub struct InvalidCursor;

impl Cursor {
    pub fn encode(&self) -> String {
        let raw = format!("{VERSION}.{}.{}", self.published_at.timestamp_micros(), self.id);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(token: &str) -> Result<Self, InvalidCursor> {
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidCursor)?;
        let raw = std::str::from_utf8(&bytes).map_err(|_| InvalidCursor)?;
        let mut parts = raw.split('.');
        let (Some(VERSION), Some(micros), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidCursor);
        };
        let micros: i64 = micros.parse().map_err(|_| InvalidCursor)?;
        let id = PostId(id.parse().map_err(|_| InvalidCursor)?);
        let published_at = DateTime::from_timestamp_micros(micros).ok_or(InvalidCursor)?;
        if id.0 <= 0 {
            return Err(InvalidCursor);
        }
        Ok(Self { published_at, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cursor = Cursor {
            published_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: PostId(42),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
    }

    #[test]
    fn garbage_is_rejected() {
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for token in [
            "".to_owned(),
            "!!!".to_owned(),
            b64("v1.1.2.3"),
            b64("v2.1.2"),
            b64("v1.x.2"),
            b64("v1.1.-5"),
            b64("v1.1"),
            b64(&format!("v1.{}.1", i64::MAX)),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert_eq!(Cursor::decode(&token), Err(InvalidCursor), "{token:?} should be invalid");
        }
    }
}
