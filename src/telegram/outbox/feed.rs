//! Queueing a broadcast's recipients just ahead of its sending: whichever worker holds the bot's
//! feeder lease (`worker::feed`) tops up each broadcast's share of the outbox to a few seconds
//! of sending, from the cursor in Postgres, a second of sending at a time for each broadcast in
//! turn, so that several broadcasts of a bot take turns in the outbox. Redis holds that window
//! of recipients, whatever the audience; the admin's update only records the broadcast.
//!
//! A page goes into Redis with the mark of how far queueing got, in one call that queues
//! nothing if the mark moved since it was read (`broadcast_queue.lua`): two feeders (a lease
//! that expired under a slow one) cannot queue a recipient twice. Then the cursor in Postgres
//! moves. A feeder that dies in between leaves the mark ahead of the cursor, and the next one
//! moves the cursor up to it; a mark behind the cursor means Redis lost writes, and the
//! reconciler queues again first what it lost (`rebuild`).

use deadpool_postgres::Pool;

use super::broadcast::{BROADCAST_MEMORY_MS, rate};
use crate::kv::{Conn, scripts};
use crate::settings::MAX_PAID_RATE;
use crate::store::broadcasts::{self, Going};
use crate::telegram::client::Client;
use crate::types::UserId;

/// Seconds of sending a broadcast's queue holds ahead at most.
const AHEAD_SECONDS: u32 = 5;
/// The smallest window, for slow rates (pages of a few recipients cost a round trip each).
const MIN_WINDOW: i64 = 100;
/// Most recipients queued at once.
const PAGE: i64 = 500;

/// Tops up the queue of each of the bot's broadcasts still queueing, a turn each; `free_rate` is
/// what the bot may send a second outside paid broadcasts (`None`: no limit). Returns how many recipients it
/// queued.
pub async fn feed(db: &Pool, conn: &mut Conn, bot: &Client, free_rate: Option<f64>) -> anyhow::Result<u64> {
    let mut queued = 0;
    for going in broadcasts::queueing(db, bot.config.id).await? {
        // With no limit, the queue holds what Telegram's most allows.
        let rate = rate(&bot.config, free_rate, going.paid).unwrap_or(f64::from(MAX_PAID_RATE));
        queued += top_up(db, conn, bot, &going, rate).await?;
    }
    Ok(queued)
}

/// Queues one page of `going`'s recipients, sent at `rate` a second: as many as it sends in a
/// second (a turn: several broadcasts of the bot take turns by the second in the outbox), at
/// most until [`AHEAD_SECONDS`] of them wait to be served.
async fn top_up(db: &Pool, conn: &mut Conn, bot: &Client, going: &Going, rate: f64) -> anyhow::Result<u64> {
    let [progress, _] = bot.keys.broadcast(going.id);
    let fields: [Option<String>; 4] = redis::cmd("HMGET")
        .arg(&progress)
        .arg(&["queued_through", "queued", "sent", "refused"])
        .query_async(conn)
        .await?;
    let number = |n: usize| fields[n].as_deref().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let (mark, mut cursor) = (UserId(number(0)), going.next_user_id);
    if mark < cursor {
        return Ok(0);
    }
    if mark > cursor {
        // A page queued whose cursor did not move: counted, up to the mark.
        let page = broadcasts::recipients(db, bot.config.id, cursor, PAGE).await?;
        let more = page.iter().filter(|user| **user <= mark).count() as i32;
        broadcasts::advance_broadcast(db, going.id, mark, more, false).await?;
        cursor = mark;
    }
    let window = ((rate * f64::from(AHEAD_SECONDS)) as i64).max(MIN_WINDOW);
    let turn = (rate.ceil() as i64).clamp(1, PAGE);
    let room = (window - (number(1) - number(2) - number(3))).min(turn);
    if room <= 0 {
        return Ok(0);
    }
    // One more than there is room for says whether these are the last.
    let mut page = broadcasts::recipients(db, bot.config.id, cursor, room + 1).await?;
    let last = page.len() as i64 <= room;
    page.truncate(room as usize);
    let mut script = scripts::BROADCAST_QUEUE.prepare_invoke();
    let read = fields[0].as_deref().unwrap_or_default();
    script.key(&bot.keys.outbox()[0]).key(&progress);
    script.arg(going.id).arg(read).arg(BROADCAST_MEMORY_MS).arg(if last { "1" } else { "0" });
    for user in &page {
        script.arg(user.0);
    }
    let total: Option<i64> = script.invoke_async(conn).await?;
    if total.is_none() {
        // Another feeder moved the mark meanwhile: it goes on from there.
        return Ok(0);
    }
    let through = page.last().copied().unwrap_or(cursor);
    broadcasts::advance_broadcast(db, going.id, through, page.len() as i32, last).await?;
    Ok(page.len() as u64)
}
