//! `/ban <user id>` and `/unban <user id>`, for the bot's admins: a banned user's posts leave
//! every feed page at once, and they may post no more.

use teloxide_core::types::User;

use super::ctx::Ctx;
use super::error::HandleError;
use crate::store::users;
use crate::types::{ChatId, UserId};

/// `/ban <user id>` and `/unban <user id>`, for the bot's admins.
pub async fn ban(
    ctx: &Ctx<'_>,
    chat: ChatId,
    from: &User,
    args: &str,
    banned: bool,
) -> Result<(), HandleError> {
    if !ctx.is_admin(from) {
        return ctx.say(chat, "Only the bot's admins may do that.").await;
    }
    let Ok(target) = args.parse::<UserId>() else {
        let usage = if banned { "/ban <user id>" } else { "/unban <user id>" };
        return ctx.say(chat, format!("Usage: {usage}")).await;
    };
    ctx.fenced()?;
    if !users::set_banned(&ctx.services.db, ctx.bot_id(), target, banned).await? {
        return ctx.say(chat, format!("I have never seen user {target}.")).await;
    }
    ctx.services.users.invalidate(&mut ctx.conn(), &ctx.bot.keys, target).await?;
    // Their posts leave (or return to) every feed page at once.
    ctx.removed().await?;
    let done = if banned { "banned: their posts left the feed" } else { "unbanned" };
    ctx.say(chat, format!("User {target} {done}.")).await
}
