//! One worker's turn at one update of one chat, and what was read with it.

use std::sync::Mutex;
use std::time::Instant;

use crate::types::UpdateId;

/// The keys the handler reads first: the sender's cached user and the chat's dialogue.
pub struct ReadAhead {
    pub user: String,
    pub dialogue: String,
}

/// Their values, read under the turn: only the turn's holder writes a chat's dialogue, so the
/// state stays current until the turn ends.
#[derive(Debug, Default)]
pub(super) struct ReadValues {
    pub user: Option<(String, Option<String>)>,
    /// The dialogue hash's fields, in the order of `dialogue::Fields::NAMES`.
    pub dialogue: Option<(String, Vec<Option<String>>)>,
}

pub enum Begin {
    /// Handled before: acknowledge without doing anything.
    Done,
    /// The chat's turn is ours until [`Turn::end`].
    Go(Box<Turn>),
}

/// This worker's turn at one update of one chat.
pub struct Turn {
    pub(super) token: String,
    pub(super) update_id: UpdateId,
    /// The key, slot and fingerprint that mark the update handled.
    pub(super) handled: (String, i64, u16),
    /// The chat's lease, queue and hold.
    pub(super) keys: [String; 3],
    pub(super) read: ReadValues,
    /// The update's id was handled before as another update.
    pub reused: bool,
    /// Until when the lease is surely ours (see [`Turn::fence`]).
    pub(super) valid_until: Mutex<Instant>,
}

/// The chat's turn is no longer surely this worker's: its effects must stop.
#[derive(Debug, thiserror::Error)]
#[error("the chat's turn was lost: its lease expired or another worker took it")]
pub struct LeaseLost;

impl Turn {
    /// The token that fences this attempt's writes (see `dialogue_save.lua`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Checked before every durable effect: fails once the lease may have expired (the last
    /// renewal is too long ago, as after a stall), so that a worker that lost its turn writes
    /// nothing more while another may hold it.
    pub fn fence(&self) -> Result<(), LeaseLost> {
        let valid_until = *self.valid_until.lock().unwrap_or_else(|p| p.into_inner());
        if Instant::now() < valid_until { Ok(()) } else { Err(LeaseLost) }
    }

    pub(super) fn renewed(&self, valid_until: Instant) {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = valid_until;
    }

    pub fn lease_key(&self) -> &str {
        &self.keys[0]
    }

    /// The cached user under `key` as read with the turn, if it was.
    pub fn user_read(&self, key: &str) -> Option<Option<String>> {
        self.read.user.as_ref().filter(|(k, _)| k == key).map(|(_, value)| value.clone())
    }

    /// The dialogue hash under `key` as read with the turn, if it was.
    pub fn dialogue_read(&self, key: &str) -> Option<Vec<Option<String>>> {
        self.read.dialogue.as_ref().filter(|(k, _)| k == key).map(|(_, fields)| fields.clone())
    }
}
