//! botfleet: a Telegram bot backend that scales out.
//!
//! # Layout
//!
//! - [`settings`]: typed settings read once from the environment (or a file) and passed down.
//! - [`domain`]: parsed newtypes (`PostText`, `WebhookSecret`, `BotName`, …).
//! - [`db`]: Postgres pools, the embedded migrations and the least-privilege roles.
//! - [`worker`]: the webhook worker — intake of updates and the bot's behaviour.
//! - [`api`]: the API node — the public feed, read from replicas with the read-only role.
//! - [`admin`]: the admin port every long-running process serves (`/healthz`, `/readyz`,
//!   `/metrics`) and the drain state behind `/readyz`.
//! - [`kv`]: Redis connections and key prefixes.
//! - [`http`]: JSON errors and serving with a bounded drain, shared by every server.
//! - [`metrics`]: the one Prometheus registry of a process and its metric families.
//! - [`telegram`]: the Bot API client (teloxide's) pointed at Telegram or the fake.
//! - [`webhook`]: the deploy-time `botfleet webhook set/info/delete` commands.
//! - [`feed`]: the feed's shared model (`PostView`) and publishing to it.
//! - [`fake_telegram`]: the Bot API double used by tests, the local cluster and load tests.
//! - [`shutdown`]: the shutdown signal every server and loop selects on.

pub mod admin;
pub mod api;
pub mod db;
pub mod domain;
pub mod fake_telegram;
pub mod feed;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod kv;
pub mod metrics;
pub mod replay;
pub mod settings;
pub mod shutdown;
pub mod telegram;
pub mod telemetry;
pub mod webhook;
pub mod worker;
