//! `/broadcast [--paid] <text>`, `/broadcast_pause`, `/broadcast_resume` and
//! `/broadcast_cancel`, for the bot's admins.
//!
//! A broadcast goes to every user of the bot neither banned nor unreachable. Its text is stored
//! once, in Postgres; the admin's update records it and answers with a progress message. Its
//! recipients are queued in the outbox in user id order, a few seconds of sending ahead, by
//! whichever worker holds the bot's feeder lease, from the cursor in Postgres
//! (`telegram::outbox::feed`): Redis holds that window, whatever the audience, and if the
//! worker dies another goes on where it stopped. The outbox's senders deliver within the flood
//! limits (a paid broadcast with `allow_paid_broadcast`, at the bot's paid rate, on a schedule
//! of its own) and keep editing the admin's progress message; `/broadcast_cancel` makes them
//! drop what is still queued; `/broadcast_pause` makes them park it until `/broadcast_resume`.
//! A message in flight when its sender dies may go out twice
//! (counted in `botfleet_outbox_redeliveries_total`); nobody is missed.

use teloxide_core::types::User;

use super::ctx::Ctx;
use super::error::HandleError;
use crate::store::broadcasts;
use crate::telegram::outbox::{self, Progress};
use crate::types::ChatId;

/// Telegram's longest message.
const MAX_CHARS: usize = 4096;

/// `/broadcast [--paid] <text>`: records the broadcast and answers with its progress message;
/// its recipients are queued as it goes (`telegram::outbox::feed`).
pub async fn start(ctx: &Ctx<'_>, chat: ChatId, from: &User, text: &str) -> Result<(), HandleError> {
    if !ctx.is_admin(from) {
        return ctx.say(chat, "Only the bot's admins may do that.").await;
    }
    let (paid, text) = match text.strip_prefix("--paid") {
        Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => (true, rest.trim_start()),
        _ => (false, text),
    };
    if text.is_empty() || text.chars().count() > MAX_CHARS {
        let usage = format!("Usage: /broadcast [--paid] <text of 1 to {MAX_CHARS} characters>");
        return ctx.say(chat, usage).await;
    }
    let (db, bot_id) = (&ctx.services.db, ctx.bot.config.id);
    ctx.fenced()?;
    let broadcast =
        broadcasts::start_broadcast(db, bot_id, (ctx.update_id, ctx.origin), chat, (text, paid)).await?;
    if broadcast.status == "cancelled" {
        return ctx.say(chat, format!("Broadcast #{} was cancelled.", broadcast.id)).await;
    }
    // The progress message, which the senders edit from here on.
    let estimate = broadcasts::audience(db, bot_id).await?;
    let rate = outbox::rate(&ctx.bot.config, ctx.services.flood.limits.per_bot, paid);
    let mut progress = Progress { id: broadcast.id, sent: 0, refused: 0, total: None, estimate, rate };
    let Some(message) = ctx.say_message(chat, progress.text()).await? else {
        return Ok(());
    };
    let at = (chat, message);
    (progress.sent, progress.refused, progress.total) =
        outbox::report_progress_to(&mut ctx.conn(), &ctx.bot.keys, (broadcast.id, estimate), at).await?;
    // Every recipient may have been served before the senders knew where to report.
    if progress.total.is_some_and(|total| progress.sent + progress.refused >= total) {
        ctx.edit(chat, message, progress.text()).await?;
    }
    Ok(())
}

/// `/broadcast_pause` (`paused`) and `/broadcast_resume`: the admin's latest broadcast still
/// going queues and sends nothing more until resumed (what is queued waits), or goes on.
pub async fn pause(ctx: &Ctx<'_>, chat: ChatId, from: &User, paused: bool) -> Result<(), HandleError> {
    if !ctx.is_admin(from) {
        return ctx.say(chat, "Only the bot's admins may do that.").await;
    }
    ctx.fenced()?;
    let (db, bot_id) = (&ctx.services.db, ctx.bot.config.id);
    let Some(id) = broadcasts::pause_broadcast(db, bot_id, chat, paused).await? else {
        let nothing = if paused { "No broadcast to pause." } else { "No paused broadcast to resume." };
        return ctx.say(chat, nothing).await;
    };
    outbox::pause_broadcast(&mut ctx.conn(), &ctx.bot.keys, id, paused).await?;
    let said = if paused {
        format!("Broadcast #{id} paused: /broadcast_resume goes on, /broadcast_cancel stops it.")
    } else {
        format!("Broadcast #{id} resumed.")
    };
    ctx.say(chat, said).await
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
