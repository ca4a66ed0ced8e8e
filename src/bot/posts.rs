//! The posting flows: quick posts from a text or a captioned photo, the guided `/post`
//! dialogue, `/my` with deleting, edits of pending posts, and moderation.

use teloxide_core::types::{CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, User};

use super::commands::{Command, Invocation};
use super::ctx::{Ctx, Reply, author_of};
use super::dialogue::{Photo, State};
use super::error::HandleError;
use super::moderation::moderate;
use crate::store::Committed;
use crate::store::posts::{self, NewPost};
use crate::types::{ChatId, MessageId, PostId, PostText, UserId};

/// How many of their posts `/my` shows.
const MY_POSTS: i64 = 10;

fn photo_of(message: &Message) -> Option<Photo> {
    let largest = message.photo()?.last()?;
    Some(Photo { file_id: largest.file.id.0.clone(), unique_id: largest.file.unique_id.0.clone() })
}

fn buttons(row: Vec<(String, String)>) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new([row
        .into_iter()
        .map(|(label, data)| InlineKeyboardButton::callback(label, data))])
}

/// A private message that is not a command handled elsewhere: its effects, the next dialogue
/// state, and the reply, which the caller sends once that state is saved.
pub async fn on_message(
    ctx: &Ctx<'_>,
    message: &Message,
    from: &User,
    state: &State,
    invocation: Option<Invocation<'_>>,
) -> Result<(State, Reply), HandleError> {
    let text = message.text().or(message.caption()).unwrap_or_default();
    let photo = photo_of(message);
    if let Some(invocation) = invocation {
        return Ok(on_command(invocation, state));
    }
    let stay = |reply: &str| Ok((state.clone(), reply.into()));
    match state {
        State::Idle if photo.is_none() && message.text().is_none() => {
            stay("Send me a text, or a photo with a caption. /help says more.")
        }
        State::Idle => Ok((State::Idle, quick_post(ctx, message, from, text, photo).await?)),
        State::AwaitText => match (PostText::parse(text), &photo) {
            (_, Some(_)) => stay("Send the text first; the photo comes next."),
            (Ok(text), None) => Ok((
                State::AwaitPhoto { text: text.as_str().to_owned() },
                "Now send a photo for your post, or /skip.".into(),
            )),
            (Err(why), None) => stay(&format!("That text is {why}. Send another, or /cancel.")),
        },
        State::AwaitPhoto { text } => match photo {
            Some(photo) => Ok(preview(text, Some(photo))),
            None => stay("Send a photo, or /skip to post without one."),
        },
        State::Confirm { .. } => stay("Use the buttons under the preview: Publish or Cancel."),
    }
}

fn on_command(invocation: Invocation<'_>, state: &State) -> (State, Reply) {
    match (invocation.command, state) {
        (Some(Command::Post), _) => {
            (State::AwaitText, "Send the text of your post (10 to 2000 characters), or /cancel.".into())
        }
        (Some(Command::Skip), State::AwaitPhoto { text }) => preview(text, None),
        _ => {
            let name = invocation.name;
            (state.clone(), format!("I do not know /{name} here. /help lists what I can do.").into())
        }
    }
}

fn preview(text: &str, photo: Option<Photo>) -> (State, Reply) {
    let with_photo = if photo.is_some() { " (with your photo)" } else { "" };
    let keyboard = buttons(vec![
        ("Publish".to_owned(), "post:publish".to_owned()),
        ("Cancel".to_owned(), "post:cancel".to_owned()),
    ]);
    let reply = Reply::with_buttons(format!("Your post{with_photo}:\n\n{text}"), keyboard);
    (State::Confirm { text: text.to_owned(), photo }, reply)
}

/// Posts a text or a captioned photo at once; returns what to tell its author.
async fn quick_post(
    ctx: &Ctx<'_>,
    message: &Message,
    from: &User,
    text: &str,
    photo: Option<Photo>,
) -> Result<Reply, HandleError> {
    let chat = ChatId::from(message.chat.id);
    let text = match PostText::parse(text) {
        Ok(text) => text,
        Err(why) if photo.is_some() => return Ok(format!("Not posted: the caption is {why}.").into()),
        Err(why) => return Ok(format!("Not posted: {why}.").into()),
    };
    let post = create(ctx, chat, Some(message.id.into()), from, text.as_str(), photo.as_ref()).await?;
    Ok(announce(ctx, post, from).await?.into())
}

/// Stores a new post of this update: published at once, or pending with a moderator chat.
async fn create(
    ctx: &Ctx<'_>,
    chat: ChatId,
    message_id: Option<MessageId>,
    from: &User,
    text: &str,
    photo: Option<&Photo>,
) -> Result<Committed, HandleError> {
    let post = NewPost {
        bot_id: ctx.bot.config.id,
        update_id: ctx.update_id,
        origin: ctx.origin.to_owned(),
        chat_id: chat,
        message_id,
        author_id: UserId::from(from),
        text: text.to_owned(),
        photo: photo.map(|p| (p.file_id.clone(), p.unique_id.clone())),
        published: ctx.bot.config.moderator_chat.is_none(),
    };
    ctx.fenced()?;
    let stored = ctx.services.posts.insert(post).await?;
    ctx.services.metrics.posts_created.with_label_values(&[ctx.bot.config.name.as_str()]).inc();
    Ok(stored)
}

/// After the commit: publishes the post, or sends it to the moderators; returns what to tell
/// its author.
async fn announce(ctx: &Ctx<'_>, (post, position): Committed, from: &User) -> Result<String, HandleError> {
    if let Some(view) = post.view(ctx.bot.config.id, author_of(from)) {
        ctx.publish(view, position).await?;
        return Ok(format!("Published as post #{}.", post.id));
    }
    if post.status == "rejected" {
        // Banned after the user cache said otherwise: the store checked the ban itself.
        return Ok("You are banned from posting here.".to_owned());
    }
    if let Some(moderators) = ctx.bot.config.moderator_chat {
        let media = if post.has_media { " (with a photo)" } else { "" };
        let keyboard = buttons(vec![
            ("Approve".to_owned(), format!("mod:ok:{}", post.id)),
            ("Reject".to_owned(), format!("mod:no:{}", post.id)),
        ]);
        let text = format!("New post #{} by {}{media}:\n\n{}", post.id, from.first_name, post.text);
        ctx.notify(&format!("review:{}", post.id), moderators, &text, Some(&keyboard)).await?;
    }
    Ok(format!("Thanks! Post #{} is waiting for a moderator.", post.id))
}

/// An inline button was pressed; returns the short answer shown to whoever pressed it.
pub async fn on_button(ctx: &Ctx<'_>, query: &CallbackQuery, data: &str) -> Result<String, HandleError> {
    let from = &query.from;
    let parts: Vec<&str> = data.split(':').collect();
    match parts.as_slice() {
        ["post", choice @ ("publish" | "cancel")] => confirm(ctx, from, *choice == "publish").await,
        ["del", id] => match id.parse() {
            Ok(id) => delete(ctx, from, id).await,
            Err(_) => Ok("Unknown button.".to_owned()),
        },
        ["mod", verdict @ ("ok" | "no"), id] => {
            let in_moderator_chat = query
                .message
                .as_ref()
                .is_some_and(|m| Some(m.chat().id.into()) == ctx.bot.config.moderator_chat);
            match (in_moderator_chat, id.parse()) {
                (true, Ok(id)) => moderate(ctx, query, from, id, *verdict == "ok").await,
                _ => Ok("Only moderators may do that.".to_owned()),
            }
        }
        _ => Ok("Unknown button.".to_owned()),
    }
}

/// Publish or Cancel under a `/post` preview. The query's answer comes after everything else,
/// and a redelivery (the answer failed) must not tell the author twice: the message to them goes
/// through the outbox, once per update, before the dialogue ends.
async fn confirm(ctx: &Ctx<'_>, from: &User, publish: bool) -> Result<String, HandleError> {
    let chat = UserId::from(from).private_chat();
    let key = ctx.bot.keys.dialogue(chat);
    let stored = ctx.dialogue(&key).await?;
    let State::Confirm { text, photo } = &stored.state else {
        return Ok("Nothing to confirm.".to_owned());
    };
    let (told, answer) = if publish {
        let post = create(ctx, chat, None, from, text, photo.as_ref()).await?;
        (announce(ctx, post, from).await?, "Done.")
    } else {
        ("Cancelled.".to_owned(), "Cancelled.")
    };
    ctx.notify(&format!("reply:{}", ctx.origin), chat, &told, None).await?;
    ctx.save_dialogue(&key, &stored, &State::Idle).await?;
    Ok(answer.to_owned())
}

/// `/my`: the author's latest posts, each with a Delete button.
pub async fn list_mine(ctx: &Ctx<'_>, chat: ChatId, from: &User) -> Result<(), HandleError> {
    let posts = posts::posts_of(&ctx.services.db, ctx.bot.config.id, UserId::from(from), MY_POSTS).await?;
    if posts.is_empty() {
        return ctx.say(chat, "You have no posts yet.").await;
    }
    let mut text = String::from("Your latest posts:\n");
    for post in &posts {
        let excerpt: String = post.text.chars().take(60).collect();
        text.push_str(&format!("\n#{} ({}) {excerpt}", post.id, post.status));
    }
    let rows = posts.iter().map(|post| {
        vec![InlineKeyboardButton::callback(format!("Delete #{}", post.id), format!("del:{}", post.id))]
    });
    ctx.say(chat, Reply::with_buttons(text, InlineKeyboardMarkup::new(rows))).await
}

/// Deletes one of the author's posts, then invalidates the feed's pages. A click that finds
/// nothing to delete invalidates them too: it may be the redelivery of a delete whose
/// invalidation failed (Redis was down), and the row is all that said the post was there.
async fn delete(ctx: &Ctx<'_>, from: &User, id: PostId) -> Result<String, HandleError> {
    ctx.fenced()?;
    let Some(post) = posts::delete_post(&ctx.services.db, ctx.bot.config.id, UserId::from(from), id).await?
    else {
        ctx.removed().await?;
        return Ok("That post is gone already.".to_owned());
    };
    if post.status == "published" {
        ctx.removed().await?;
    }
    ctx.say(UserId::from(from).private_chat(), format!("Post #{id} deleted.")).await?;
    Ok("Deleted.".to_owned())
}

/// An edited message updates the post it created while that post is still pending.
pub async fn on_edit(ctx: &Ctx<'_>, message: &Message) -> Result<(), HandleError> {
    let Some(text) = message.text().or(message.caption()) else {
        return Ok(());
    };
    let chat = ChatId::from(message.chat.id);
    let Ok(text) = PostText::parse(text) else {
        return Ok(());
    };
    let message_id = MessageId::from(message.id);
    ctx.fenced()?;
    if posts::edit_pending(&ctx.services.db, ctx.bot.config.id, chat, message_id, text.as_str()).await? {
        ctx.say(chat, "Your pending post was updated.").await?;
    }
    Ok(())
}
