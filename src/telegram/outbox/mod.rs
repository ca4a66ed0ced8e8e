//! The durable outbox: messages that are not the reply to the update in hand (a post for the
//! moderators to review, a verdict for its author) wait in a Redis stream per bot until a
//! worker's sender has delivered them (invariant 8 applies: they go through the flood control).
//!
//! `outbox_add.lua` queues a message once per id, so a redelivered update or a second click
//! queues nothing twice. Every worker reads the stream in the consumer group `senders`; an
//! entry is acknowledged and deleted once Telegram took it or refused it for good. One that
//! failed (Telegram or the network down) stays pending, and any sender claims it again once it
//! has been idle for `claim_after` — so do the entries of a sender that died, which then leaves
//! the group. After `max_deliveries` the entry moves to the dead stream
//! (`<bot prefix>outbox:dead`) and is counted: nothing is retried forever, nothing is dropped
//! silently.
//!
//! Redis is not the system of record: Postgres journals each notice until it was delivered, and
//! each broadcast's cursor and served recipients, and [`rebuild`] queues again what Redis lost.

mod broadcast;
mod feed;
mod queue;
mod rebuild;
mod sender;
mod upkeep;

pub use broadcast::{
    Progress, add_recipient, cancel_broadcast, message_id, pause_broadcast, queued_through, rate,
    report_progress_to,
};
pub use feed::feed;
pub use queue::{Message, NotifyError, OutboxConfig, notify};
pub use rebuild::{Rebuilt, rebuild};
pub use sender::{BroadcastContents, IN_FLIGHT, Sender};
