//! botfleet: a Telegram bot backend that scales out.
//!
//! # Layout
//!
//! Modules sit on four floors; a module may use the modules of the floors below its own, and of
//! its own floor only along the arrows listed there (never in a circle). `tests/it/layout.rs`
//! reads `src/` and fails on any other `use crate::…`, and on any cycle between files.
//!
//! **Roles** — each builds its process, and owns its routes and loops, nothing more:
//! - [`worker`]: the webhook worker (`POST /webhook/{bot}`), its loops (outbox senders, the
//!   chat-turn waker, the webhook watcher).
//! - [`api`]: the API node — feed, posts, media proxy, SSE route, live page; one error type.
//! - [`fake_telegram`]: the Bot API double used by tests, the local cluster and load tests.
//! - [`migrate`]: `botfleet migrate`, the schema and the least-privilege roles.
//! - [`webhook`]: the deploy-time `botfleet webhook set/info/delete` commands.
//!
//! **Domain** — what the product does, with no HTTP types; `bot` → `feed` is the one arrow
//! inside the floor:
//! - [`bot`]: the bot's behaviour — commands, posts, dialogues, moderation, bans, broadcasts.
//! - [`feed`]: the post model, publishing, pages with their cursors and caches, the stream's hub.
//!
//! **Adapters** — how the domain reaches Postgres, Redis and Telegram. Arrows inside the floor:
//! `intake` → `kv`, `store` → `kv`, `telegram` → `kv`, `telegram` → `store`, `replay` → none.
//! - [`intake`]: exactly-once intake and the chat's turn (dedup, leases, the dialogue store).
//! - [`store`]: Postgres — pools, migrations, writes, group commit, feed reads, the user cache.
//! - [`kv`]: Redis — connections, key names and the Lua scripts.
//! - [`telegram`]: the whole sending path — client, flood control, pause, outbox, refusals.
//! - [`replay`]: delivering updates to a webhook the way Telegram does (fake Telegram, loadtest).
//!
//! **Foundations** — used by everything above, using only each other (in this order: a module
//! may use those listed after it): [`admin`], [`http`], [`telemetry`], [`metrics`],
//! [`settings`], [`tls`], [`types`], [`cli`], [`batch`], [`keyed`], [`random`], [`shutdown`].

pub mod admin;
pub mod api;
pub mod batch;
pub mod bot;
pub mod cli;
pub mod fake_telegram;
pub mod feed;
/// The fuzz targets' bodies: test tooling, built only with the `test-tooling` feature.
#[cfg(feature = "test-tooling")]
pub mod fuzz;
pub mod http;
pub mod intake;
pub mod keyed;
pub mod kv;
pub mod metrics;
pub mod migrate;
pub mod random;
pub mod replay;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telegram;
pub mod telemetry;
pub mod tls;
pub mod types;
pub mod webhook;
pub mod worker;
