//! The public feed, one capability: the post model, publishing (and its batching), pages (with
//! their cursors and caches) and the live stream's hub. The API node's handlers and the bot's
//! behaviour use it; it never answers HTTP itself (that is `api`'s) and never writes a post
//! (that is the store's, by the bot's decision).

pub mod cache;
pub mod cursor;
pub mod hub;
pub mod pages;
pub mod publish;

/// The published post's shape: the store reads it and the stream carries it, so it lives with
/// the foundations.
pub use crate::types::{Author, PostView};
