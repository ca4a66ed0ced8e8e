//! Where dialogue state is stored: Redis, so that it survives any worker's restart and moves
//! freely between workers (invariant 4). What the states are is `bot::dialogue`'s; this module
//! stores any serde type whose `Default` means "no dialogue".
//!
//! Writes are compare-and-set on a version, fenced by the chat's lease: a worker whose turn
//! expired cannot overwrite the state its successor wrote. An abandoned dialogue expires.
//!
//! A step is saved before its reply is sent, never after: a reply sent before a save that then
//! failed (Redis restarting) would go out again with Telegram's redelivery. So that the
//! redelivery of a step whose reply failed still sends the same reply, the hash keeps the update
//! that made the step (`u`) and the state before it (`p`): that update is answered again from
//! `p`, and saving it again changes nothing.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::turn::Turn;
use crate::kv::{Conn, scripts};
use crate::types::UpdateId;

/// A chat's dialogue hash as Redis keeps it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    /// `v`: bumped by every save.
    pub version: Option<i64>,
    /// `s`: the state as JSON; empty when the dialogue ended.
    pub state: Option<String>,
    /// `u`: the update whose step saved it.
    pub update: Option<i64>,
    /// `p`: the state before that step.
    pub previous: Option<String>,
}

impl Fields {
    /// The hash's fields in the order [`Fields::from_values`] takes them.
    pub const NAMES: [&str; 4] = ["v", "s", "u", "p"];

    pub fn from_values(mut values: impl Iterator<Item = Option<String>>) -> Self {
        let mut next = || values.next().flatten();
        let (version, state, update, previous) = (next(), next(), next(), next());
        let number = |n: Option<String>| n.and_then(|n| n.parse().ok());
        Fields { version: number(version), state, update: number(update), previous }
    }
}

/// A state as read by one update, with the version a later save must still find.
#[derive(Debug)]
pub struct Stored<S> {
    pub state: S,
    version: i64,
    /// The update reading it, whose step a save records.
    update_id: UpdateId,
    /// This update's step was saved already (this is its redelivery): `state` is the one the step
    /// started from, so that it is answered the same way, and saving it again changes nothing.
    saved: bool,
}

impl<S: DeserializeOwned + Default> Stored<S> {
    /// What `update_id` reads in `fields`; a state this version cannot read counts as no dialogue.
    pub fn read(fields: Fields, update_id: UpdateId) -> Self {
        let saved = fields.update == Some(update_id.0);
        let state = if saved { fields.previous } else { fields.state };
        let state = state.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        Stored { state, version: fields.version.unwrap_or(0), update_id, saved }
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
    /// The chat's state as `update_id` reads it: as read with the turn, if it was.
    pub async fn load<S: DeserializeOwned + Default>(
        &self,
        conn: &mut Conn,
        key: &str,
        turn: &Turn,
        update_id: UpdateId,
    ) -> Result<Stored<S>, DialogueError> {
        if let Some(values) = turn.dialogue_read(key) {
            return Ok(Stored::read(Fields::from_values(values.into_iter()), update_id));
        }
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(key)
            .arg(&Fields::NAMES)
            .query_async(conn)
            .await
            .map_err(anyhow::Error::from)?;
        Ok(Stored::read(Fields::from_values(values.into_iter()), update_id))
    }

    /// Saves `next`, the step of the update that read `read`, if nothing changed since; `Idle`
    /// ends the dialogue.
    pub async fn save<S: Serialize + Default + PartialEq>(
        &self,
        conn: &mut Conn,
        key: &str,
        read: &Stored<S>,
        next: &S,
        turn: &Turn,
    ) -> Result<(), DialogueError> {
        if read.saved || *next == read.state {
            return Ok(());
        }
        let json = |state: &S| {
            if *state == S::default() {
                Ok(String::new())
            } else {
                serde_json::to_string(state).map_err(anyhow::Error::from)
            }
        };
        let version: i64 = scripts::DIALOGUE_SAVE
            .key(key)
            .key(turn.lease_key())
            .arg(read.version)
            .arg(json(next)?)
            .arg(turn.token())
            .arg(self.ttl.as_millis() as u64)
            .arg(read.update_id)
            .arg(json(&read.state)?)
            .invoke_async(conn)
            .await
            .map_err(anyhow::Error::from)?;
        if version < 0 { Err(DialogueError::Conflict) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dialogue of two steps, as the bot's would be.
    #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "step", rename_all = "snake_case")]
    enum State {
        #[default]
        Idle,
        AwaitText,
        AwaitPhoto {
            text: String,
        },
    }

    fn fields(update: i64) -> Fields {
        Fields {
            version: Some(2),
            state: Some(r#"{"step":"await_photo","text":"a text of a post"}"#.to_owned()),
            update: Some(update),
            previous: Some(r#"{"step":"await_text"}"#.to_owned()),
        }
    }

    #[test]
    fn the_update_whose_step_was_saved_reads_the_state_it_started_from() {
        let later: Stored<State> = Stored::read(fields(7), UpdateId(8));
        assert_eq!(later.state, State::AwaitPhoto { text: "a text of a post".to_owned() });
        assert!(!later.saved);
        let redelivered: Stored<State> = Stored::read(fields(7), UpdateId(7));
        assert_eq!(redelivered.state, State::AwaitText);
        assert!(redelivered.saved);
        assert_eq!(redelivered.version, 2);
    }

    #[test]
    fn an_ended_or_unreadable_dialogue_is_idle() {
        let ended = Fields { state: Some(String::new()), ..fields(7) };
        assert_eq!(Stored::<State>::read(ended, UpdateId(8)).state, State::Idle);
        let unknown = Fields { state: Some(r#"{"step":"from_the_future"}"#.to_owned()), ..fields(7) };
        assert_eq!(Stored::<State>::read(unknown, UpdateId(8)).state, State::Idle);
        assert_eq!(Stored::<State>::read(Fields::default(), UpdateId(1)).state, State::Idle);
    }

    #[test]
    fn fields_come_in_the_order_of_their_names() {
        let values = ["3", "{}", "41", ""].map(|v| Some(v.to_owned()));
        let read = Fields::from_values(values.into_iter());
        assert_eq!(read.version, Some(3));
        assert_eq!(read.update, Some(41));
        assert_eq!(read.previous.as_deref(), Some(""));
        assert_eq!(Fields::from_values(std::iter::empty()), Fields::default());
    }
}
