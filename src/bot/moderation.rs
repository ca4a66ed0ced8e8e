//! Moderation: with a moderator chat configured, new posts wait there for Approve or Reject.

use teloxide_core::types::{CallbackQuery, User};

use super::ctx::Ctx;
use super::error::HandleError;
use crate::store::posts;
use crate::types::PostId;

/// Approve or Reject in the moderator chat. The first decision wins; a second click, by another
/// moderator or through another worker, changes nothing. The post is published and its author
/// told (through the outbox, once per post) whichever click or delivery gets there, and the
/// deciding click's redelivery edits the moderator chat's message: a redelivery after a failure
/// half way finishes the job.
pub async fn moderate(
    ctx: &Ctx<'_>,
    query: &CallbackQuery,
    moderator: &User,
    id: PostId,
    approve: bool,
) -> Result<String, HandleError> {
    ctx.fenced()?;
    let decided = posts::decide(&ctx.services.db, ctx.bot.config.id, id, approve, ctx.origin).await?;
    let Some((post, author, ours)) = decided else {
        return Ok("That post is gone.".to_owned());
    };
    let (verdict, notice) = if post.status == "published" {
        ("approved", format!("Your post #{id} was published."))
    } else {
        ("rejected", format!("Your post #{id} was not accepted."))
    };
    if let Some(view) = post.view(ctx.bot.config.id, author) {
        // Read after the decision committed: a replica that has replayed this far has the post.
        let position = posts::wal_position(&ctx.services.db).await?;
        ctx.publish(view, position).await?;
    }
    ctx.notify(&format!("verdict:{id}"), post.chat_id, &notice, None).await?;
    if !ours {
        return Ok("Already decided.".to_owned());
    }
    if let Some(message) = &query.message {
        let text = format!("Post #{id}: {verdict} by {}.\n\n{}", moderator.first_name, post.text);
        ctx.edit(message.chat().id.into(), message.id(), text).await?;
    }
    Ok(format!("Post #{id} {verdict}."))
}
