//! Dialogue state, in teloxide's style — a state enum and small handlers — but stored in Redis
//! so it survives any worker's restart and moves freely between workers (invariant 4).
//!
//! Writes are compare-and-set on a version, fenced by the chat's lease: a worker whose turn
//! expired cannot overwrite the state its successor wrote. An abandoned dialogue expires.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::intake::Turn;
use crate::kv::{Conn, scripts};

/// Where a chat is in the guided `/post` dialogue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum State {
    /// No dialogue: texts become posts directly.
    #[default]
    Idle,
    /// `/post` was sent: waiting for the text.
    AwaitText,
    /// Waiting for an optional photo (or `/skip`).
    AwaitPhoto { text: String },
    /// The preview is shown: waiting for Publish or Cancel.
    Confirm { text: String, photo: Option<Photo> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Photo {
    pub file_id: String,
    pub unique_id: String,
}

/// A state as read, with the version a later save must still find.
#[derive(Debug)]
pub struct Stored {
    pub state: State,
    version: i64,
}

impl Stored {
    /// The state from the hash's fields `v` and `s` as read.
    pub fn read(version: Option<i64>, state: Option<String>) -> Self {
        let state = state.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        Stored { state, version: version.unwrap_or(0) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DialogueError {
    #[error("redis: {0}")]
    Redis(#[from] anyhow::Error),
    #[error("the dialogue changed since it was read, or the chat's turn was lost")]
    Conflict,
}

pub struct Dialogues {
    pub ttl: Duration,
}

impl Dialogues {
    /// The chat's state; a state this version cannot read counts as no dialogue.
    pub async fn load(&self, conn: &mut Conn, key: &str) -> Result<Stored, DialogueError> {
        let (version, state): (Option<i64>, Option<String>) = redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("s")
            .query_async(conn)
            .await
            .map_err(anyhow::Error::from)?;
        Ok(Stored::read(version, state))
    }

    /// Saves `next` if nothing changed since `read`; `Idle` ends the dialogue.
    pub async fn save(
        &self,
        conn: &mut Conn,
        key: &str,
        read: &Stored,
        next: &State,
        turn: &Turn,
    ) -> Result<(), DialogueError> {
        if *next == read.state {
            return Ok(());
        }
        let json = match next {
            State::Idle => String::new(),
            state => serde_json::to_string(state).map_err(anyhow::Error::from)?,
        };
        let version: i64 = scripts::DIALOGUE_SAVE
            .key(key)
            .key(turn.lease_key())
            .arg(read.version)
            .arg(json)
            .arg(turn.token())
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(conn)
            .await
            .map_err(anyhow::Error::from)?;
        if version < 0 { Err(DialogueError::Conflict) } else { Ok(()) }
    }
}
