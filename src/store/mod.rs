//! Postgres, the only source of truth: pools, the embedded migrations and roles, every write of
//! the worker (each idempotent per update or guarded by the row's current state, so that a
//! redelivery or a second worker never applies it twice) and every read of the feed (through
//! [`replicas::Reader`], which never reads a replica behind the primary's last publish).
//!
//! Must never hold business rules: what a post or a ban means is `bot`'s and `feed`'s; here is
//! only how it is stored.

pub mod broadcasts;
pub mod feed;
mod group_commit;
pub mod migrations;
pub mod notices;
mod pool;
pub mod posts;
pub mod replicas;
mod sql;
pub mod user_cache;
pub mod users;

pub use group_commit::{Committed, PostWriter};
pub use pool::{connect, ping, pool};
pub use sql::StoreError;
