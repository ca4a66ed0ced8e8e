//! The guided `/post` dialogue's states, in teloxide's style: a state enum and small handlers
//! (`posts.rs`). They are stored by `intake::dialogue`, fenced by the chat's turn.

use serde::{Deserialize, Serialize};

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
