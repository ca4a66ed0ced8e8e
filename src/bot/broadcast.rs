//! `/broadcast <text>` and `/broadcast_cancel`, for the bot's admins.
//!
//! A broadcast queues one outbox message per recipient (every user of the bot neither banned
//! nor unreachable), once per user (`bc:<broadcast>:<user>` ids), page by page in user id order
//! with its cursor in Postgres: if the worker dies while queueing, Telegram redelivers the
//! admin's update and queueing resumes where it stopped. The outbox's senders deliver within
//! the flood limits and keep editing the admin's progress message; `/broadcast_cancel` makes
//! them drop what is still queued. A message in flight when its sender dies may go out twice
//! (counted in `botfleet_outbox_redeliveries_total`); nobody is missed.

use teloxide_core::types::User;

use super::ctx::Ctx;
use super::error::HandleError;
use crate::store::broadcasts;
use crate::telegram::outbox::{self, progress_text};
use crate::types::ChatId;

/// Recipients read and queued at a time.
const PAGE: i64 = 500;
/// Telegram's longest message.
const MAX_CHARS: usize = 4096;

pub async fn start(ctx: &Ctx<'_>, chat: ChatId, from: &User, text: &str) -> Result<(), HandleError> {
    if !ctx.is_admin(from) {
        return ctx.say(chat, "Only the bot's admins may do that.").await;
    }
    if text.is_empty() || text.chars().count() > MAX_CHARS {
        return ctx.say(chat, format!("Usage: /broadcast <text of 1 to {MAX_CHARS} characters>")).await;
    }
    let (db, bot_id) = (&ctx.services.db, ctx.bot.config.id);
    ctx.fenced()?;
    let mut broadcast =
        broadcasts::start_broadcast(db, bot_id, (ctx.update_id, ctx.origin), chat, text).await?;
    if broadcast.status == "cancelled" {
        return ctx.say(chat, format!("Broadcast #{} was cancelled.", broadcast.id)).await;
    }
    let mut conn = ctx.conn();
    while broadcast.status == "queueing" {
        let page = broadcasts::recipients(db, bot_id, broadcast.next_user_id, PAGE).await?;
        ctx.fenced()?;
        for &user in &page {
            let keys = &ctx.bot.keys;
            outbox::add_recipient(&mut conn, keys, broadcast.id, user)
                .await
                .map_err(HandleError::Unavailable)?;
        }
        let last = page.len() < PAGE as usize;
        let next = page.last().copied().unwrap_or(broadcast.next_user_id);
        outbox::queued_through(&mut conn, &ctx.bot.keys, broadcast.id, next).await?;
        broadcasts::advance_broadcast(db, broadcast.id, next, page.len() as i32, last).await?;
        broadcast.next_user_id = next;
        broadcast.queued += page.len() as i32;
        if last {
            broadcast.status = "sending".to_owned();
        }
    }
    // The progress message, which the senders edit from here on.
    let total = i64::from(broadcast.queued);
    let Some(sent) = ctx.say_message(chat, progress_text(broadcast.id, 0, total)).await? else {
        return Ok(());
    };
    let done =
        outbox::report_progress_to(&mut conn, &ctx.bot.keys, broadcast.id, total, (chat, sent)).await?;
    // Every recipient may have been served before the senders knew where to report.
    if done >= total {
        ctx.edit(chat, sent, progress_text(broadcast.id, done, total)).await?;
    }
    Ok(())
}

pub async fn cancel(ctx: &Ctx<'_>, chat: ChatId, from: &User) -> Result<(), HandleError> {
    if !ctx.is_admin(from) {
        return ctx.say(chat, "Only the bot's admins may do that.").await;
    }
    ctx.fenced()?;
    let Some(id) = broadcasts::cancel_broadcast(&ctx.services.db, ctx.bot.config.id, chat).await? else {
        return ctx.say(chat, "No broadcast to cancel.").await;
    };
    outbox::cancel_broadcast(&mut ctx.conn(), &ctx.bot.keys, id).await?;
    ctx.say(chat, format!("Broadcast #{id} cancelled: what is still queued will not be sent.")).await
}
