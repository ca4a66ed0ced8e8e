//! Opaque feed cursors: the keyset position `(published_at, id)` of the last post of a page,
//! signed by the API nodes, so that a cursor is always one a node handed out. A forged or
//! altered cursor is refused (400) before it costs a query or a cache entry.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::types::PostId;

const VERSION: &str = "v2";
/// Bytes of the HMAC-SHA-256 tag a cursor carries: 128 bits, beyond guessing.
const TAG_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub published_at: DateTime<Utc>,
    pub id: PostId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cursor")]
pub struct InvalidCursor;

/// The key every API node of a deployment signs cursors with (kept in Postgres: see migration
/// 0008), so that a cursor from one node opens on every other.
#[derive(Clone)]
pub struct CursorKey(Vec<u8>);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey([redacted])")
    }
}

impl CursorKey {
    pub fn new(key: Vec<u8>) -> Self {
        Self(key)
    }

    /// The cursor as a token: the position, then its tag, each base64url.
    pub fn seal(&self, cursor: Cursor) -> String {
        let raw = format!("{VERSION}.{}.{}", cursor.published_at.timestamp_micros(), cursor.id);
        let tag = self.tag(raw.as_bytes());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(raw), URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]))
    }

    /// The cursor a token names, if this deployment made it.
    pub fn open(&self, token: &str) -> Result<Cursor, InvalidCursor> {
        let (raw, tag) = token.split_once('.').ok_or(InvalidCursor)?;
        let (raw, tag) = (
            URL_SAFE_NO_PAD.decode(raw).map_err(|_| InvalidCursor)?,
            URL_SAFE_NO_PAD.decode(tag).map_err(|_| InvalidCursor)?,
        );
        // Compared in constant time, as tags are.
        let expected = self.tag(&raw);
        let differs = expected[..TAG_BYTES].iter().zip(&tag).fold(0, |acc, (a, b)| acc | (a ^ b));
        if tag.len() != TAG_BYTES || differs != 0 {
            return Err(InvalidCursor);
        }
        parse(std::str::from_utf8(&raw).map_err(|_| InvalidCursor)?)
    }

    /// HMAC-SHA-256 (RFC 2104) of `message` under the key.
    fn tag(&self, message: &[u8]) -> [u8; 32] {
        const BLOCK: usize = 64;
        let mut key = [0u8; BLOCK];
        if self.0.len() > BLOCK {
            key[..32].copy_from_slice(&Sha256::digest(&self.0));
        } else {
            key[..self.0.len()].copy_from_slice(&self.0);
        }
        let pad = |byte: u8| key.map(|k| k ^ byte);
        let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
        Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
    }
}

fn parse(raw: &str) -> Result<Cursor, InvalidCursor> {
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
    Ok(Cursor { published_at, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CursorKey {
        CursorKey::new(b"a key for tests".to_vec())
    }

    fn cursor() -> Cursor {
        Cursor {
            published_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: PostId(42),
        }
    }

    #[test]
    fn a_sealed_cursor_opens_with_its_key_only() {
        let token = key().seal(cursor());
        assert_eq!(key().open(&token), Ok(cursor()));
        assert_eq!(CursorKey::new(b"another key".to_vec()).open(&token), Err(InvalidCursor));
        let long_key = CursorKey::new(vec![7; 100]);
        assert_eq!(long_key.open(&long_key.seal(cursor())), Ok(cursor()));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let tag = CursorKey::new(b"Jefe".to_vec()).tag(b"what do ya want for nothing?");
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn forged_altered_and_garbage_cursors_are_refused() {
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        let token = key().seal(cursor());
        let (raw, tag) = token.split_once('.').unwrap();
        let other = key().seal(Cursor { id: PostId(41), ..cursor() });
        let (_, other_tag) = other.split_once('.').unwrap();
        for forged in [
            String::new(),
            "!!!".to_owned(),
            raw.to_owned(),
            format!("{raw}.{other_tag}"),
            format!("{raw}.{}", &tag[..tag.len() - 2]),
            format!("{raw}.{tag}A"),
            format!("{}.{tag}", b64("v2.1790000000123456.43")),
            format!("{}.{tag}", b64("v1.1790000000123456.42")),
            format!("{raw}.{tag}.{tag}"),
            b64("v1.1.2"),
        ] {
            assert_eq!(key().open(&forged), Err(InvalidCursor), "{forged:?} must be refused");
        }
    }

    #[test]
    fn a_signed_position_must_still_parse() {
        for raw in ["v2.1.2.3", "v2.x.2", "v2.1.-5", "v2.1", &format!("v2.{}.1", i64::MAX)] {
            let tag = key().tag(raw.as_bytes());
            let token =
                format!("{}.{}", URL_SAFE_NO_PAD.encode(raw), URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]));
            assert_eq!(key().open(&token), Err(InvalidCursor), "{raw:?} must be refused");
        }
    }
}
