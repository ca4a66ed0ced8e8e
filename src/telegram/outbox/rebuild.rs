//! Queueing again what Redis lost of the outbox, from what Postgres knows (Redis loses the last
//! second of writes on a crash, and everything when it comes back empty).

use std::time::Duration;

use deadpool_postgres::Pool;
use redis::AsyncCommands;

use super::broadcast::{add_recipient, queued_through};
use super::queue::queue;
use crate::kv::Conn;
use crate::store::broadcasts;
use crate::store::notices;
use crate::telegram::client::Client;
use crate::types::UserId;

/// A notice journaled this recently is left to the outbox (Redis most likely still has it).
const GRACE: Duration = Duration::from_secs(10);
/// Notices, or recipients, looked at per query.
const PAGE: i64 = 500;

/// What one rebuild queued again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub notices: u64,
    pub recipients: u64,
}

/// Queues again the bot's notices journaled but not delivered, and the broadcast recipients
/// Postgres counts as queued beyond what Redis marks queued and no sender served. Each goes
/// once: an id Redis still remembers (for a day) is not queued twice.
pub async fn rebuild(db: &Pool, conn: &mut Conn, bot: &Client) -> anyhow::Result<Rebuilt> {
    let mut rebuilt = Rebuilt::default();
    for notice in notices::undelivered(db, bot.config.id, GRACE, PAGE).await? {
        if queue(conn, &bot.keys, &notice).await? {
            rebuilt.notices += 1;
        }
    }
    // The cursor is read before the mark: the queueing sets the mark before it moves the
    // cursor, so a mark behind the cursor was lost, never still to come.
    for going in broadcasts::going(db, bot.config.id).await? {
        let [progress, _] = bot.keys.broadcast(going.id);
        let mark: Option<i64> = conn.hget(&progress, "queued_through").await?;
        let mut after = UserId(mark.unwrap_or(0));
        if after >= going.next_user_id {
            continue;
        }
        loop {
            let range = (after, going.next_user_id);
            let page = broadcasts::unserved(db, (bot.config.id, going.id), range, PAGE).await?;
            for &user in &page {
                if add_recipient(conn, &bot.keys, going.id, user).await? {
                    rebuilt.recipients += 1;
                }
            }
            match page.last() {
                Some(&last) if page.len() as i64 == PAGE => after = last,
                _ => break,
            }
        }
        queued_through(conn, &bot.keys, going.id, going.next_user_id).await?;
    }
    Ok(rebuilt)
}
