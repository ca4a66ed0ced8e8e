//! The whole sending path to Telegram: the Bot API client (teloxide's `Bot`, pointed at Telegram
//! or at the fake), the cluster-wide flood control and pause after a 429 ([`flood`], [`pause`]),
//! the durable outbox ([`outbox`]) and what Telegram's refusals mean ([`refusals`]). The worker,
//! the media proxy and the `webhook` CLI all call Telegram through here.
//!
//! The token lives inside the URL of every call, so nothing here may print a request URL;
//! teloxide already strips the token from its network errors and [`redact`] is the belt to
//! those braces for anything we log. Nothing here knows what the bot says: that is `bot`'s.

mod client;
pub mod files;
pub mod flood;
pub mod outbox;
pub mod pause;
pub mod refusals;

pub use client::{Client, SendMessage, bot, redact};
