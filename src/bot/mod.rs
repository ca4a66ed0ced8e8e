//! What the bot does: each update's behaviour — commands, posts, the `/post` dialogue, `/my`,
//! moderation, bans and broadcasts. Handlers return once every effect is durable; the webhook
//! answers after that.
//!
//! Written against narrow interfaces: [`Services`] (storage, the sending path, the feed), the
//! chat's [`Turn`] and the bot's [`Client`]; never against the worker's whole state. No HTTP here,
//! no SQL or Redis text: those are the adapters'.

mod bans;
mod broadcast;
pub mod commands;
mod ctx;
pub mod dialogue;
mod error;
mod moderation;
mod posts;

use sha2::{Digest, Sha256};
use teloxide_core::types::{AllowedUpdate, CallbackQuery, Message, Update, UpdateKind};

use crate::intake::{ReadAhead, Turn};
use crate::kv::{BotKeys, Conn};
use crate::telegram::Client;
use crate::types::{ChatId, UserId};
use commands::{Command, HELP};
use ctx::Ctx;
pub use ctx::Services;
use dialogue::State;
pub use error::HandleError;

/// Handles one update, under its chat's turn; `identity` is what it is ([`identity`]).
pub async fn handle(
    services: &Services,
    redis: &Conn,
    bot: &Client,
    turn: &Turn,
    (update, identity): (&Update, &str),
) -> Result<(), HandleError> {
    let ctx = Ctx::new(services, redis.clone(), bot, turn, (update, identity));
    match &update.kind {
        UpdateKind::Message(message) if message.chat.is_private() => on_private_message(&ctx, message).await,
        UpdateKind::EditedMessage(message) if message.chat.is_private() => {
            posts::on_edit(&ctx, message).await
        }
        UpdateKind::CallbackQuery(query) => on_callback(&ctx, query).await,
        _ => {
            let labels = [bot.config.name.as_str(), kind_name(update)];
            services.metrics.updates_ignored.with_label_values(&labels).inc();
            Ok(())
        }
    }
}

/// Reads an update (boxed: it is large, and moves with its handling). teloxide's deserializer
/// panics on some malformed updates (a `message_reaction` with neither `user` nor `actor_chat`:
/// found by the `update` fuzz target); such a body is unparseable like any other, not a dropped
/// connection.
pub fn parse_update(bytes: &[u8]) -> Result<Box<Update>, String> {
    match std::panic::catch_unwind(|| serde_json::from_slice::<Box<Update>>(bytes)) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(_) => Err("a malformed update (the parser gave up)".to_owned()),
    }
}

/// Reads an authenticated body as an update, or says why it cannot be handled as what it is:
/// it is no update at all, or a known kind the parser could not read. (A kind we do not know is
/// read, as `UpdateKind::Error`, and ignored.)
pub fn read_update(bytes: &[u8]) -> Result<Box<Update>, String> {
    let update = parse_update(bytes)?;
    if !matches!(update.kind, UpdateKind::Error(_)) {
        return Ok(update);
    }
    // A key teloxide names among its update kinds is a known kind out of the shape it expects
    // (a user's message with a `message_id` past 2^31, say), not a kind Telegram added since.
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let known = |key: &String| serde_json::from_value::<AllowedUpdate>(key.as_str().into()).is_ok();
    let Some((kind, value)) = raw.iter().find(|(key, _)| known(key)) else {
        return Ok(update);
    };
    // Read the kinds the bot handles again on their own, for the parser's reason.
    let why = match kind.as_str() {
        "message" | "edited_message" => serde_json::from_value::<Message>(value.clone()).err(),
        "callback_query" => serde_json::from_value::<CallbackQuery>(value.clone()).err(),
        _ => None,
    };
    Err(match why {
        Some(why) => format!("a {kind} the parser could not read: {why}"),
        None => format!("a {kind} the parser could not read"),
    })
}

/// A bounded label for metrics: the update's kind as Telegram names it.
pub fn kind_name(update: &Update) -> &'static str {
    match &update.kind {
        UpdateKind::Message(_) => "message",
        UpdateKind::EditedMessage(_) => "edited_message",
        UpdateKind::ChannelPost(_) => "channel_post",
        UpdateKind::EditedChannelPost(_) => "edited_channel_post",
        UpdateKind::CallbackQuery(_) => "callback_query",
        UpdateKind::InlineQuery(_) => "inline_query",
        UpdateKind::Error(_) => "unknown",
        _ => "other",
    }
}

/// What an update is, as opposed to its `update_id`, which Telegram may reuse after a week of
/// silence: a message by its chat and id, an edit by its message and edit date, a button press
/// by the query's id, anything else by its body. Every delivery of an update has the same
/// identity, and its effects are keyed by it (a post, a broadcast, a moderator's decision).
pub fn identity(update: &Update, raw: &[u8]) -> String {
    match &update.kind {
        UpdateKind::Message(m) | UpdateKind::ChannelPost(m) => format!("m:{}:{}", m.chat.id, m.id),
        UpdateKind::EditedMessage(m) | UpdateKind::EditedChannelPost(m) => {
            let edited = m.edit_date().map_or(0, |date| date.timestamp());
            format!("e:{}:{}:{edited}", m.chat.id, m.id)
        }
        UpdateKind::CallbackQuery(q) => format!("cb:{}", q.id.0),
        _ => format!("b:{:x}", Sha256::digest(raw)),
    }
}

/// The key of the chat whose turn an update takes: updates of one chat are handled in order.
pub fn turn_key(update: &Update) -> String {
    match &update.kind {
        UpdateKind::Message(m) | UpdateKind::EditedMessage(m) => m.chat.id.0.to_string(),
        UpdateKind::CallbackQuery(q) => match &q.message {
            Some(message) => message.chat().id.0.to_string(),
            None => format!("u{}", q.from.id.0),
        },
        // Nothing else we handle has an order to keep.
        _ => format!("x{}", update.id.0),
    }
}

/// The keys the update's handler reads first, read with its turn in one round trip: the user
/// and their private chat's dialogue, when the update's turn is that chat's (so that every key
/// of the script is in one slot of a Redis Cluster).
pub fn read_ahead(update: &Update, keys: &BotKeys) -> Option<ReadAhead> {
    let user = match &update.kind {
        UpdateKind::Message(m) if m.chat.is_private() => UserId::from(m.from.as_ref()?),
        // Buttons that use a dialogue are pressed in the user's private chat.
        UpdateKind::CallbackQuery(q) => UserId::from(&q.from),
        _ => return None,
    };
    if turn_key(update) != user.to_string() {
        return None;
    }
    Some(ReadAhead { user: keys.user(user), dialogue: keys.dialogue(user.private_chat()) })
}

async fn on_private_message(ctx: &Ctx<'_>, message: &Message) -> Result<(), HandleError> {
    let Some(from) = message.from.as_ref() else {
        return Ok(());
    };
    let user = ctx.touch_user(from).await?;
    let chat = ChatId::from(message.chat.id);
    if user.is_banned {
        return ctx.say(chat, "You are banned from posting here.").await;
    }
    let key = ctx.bot.keys.dialogue(chat);
    let stored = ctx.dialogue(&key).await?;
    let text = message.text().unwrap_or_default();
    let invocation = commands::parse(text);
    let (next, reply) = match invocation.map(|i| (i.command, i.args)) {
        Some((Some(Command::Start), payload)) => {
            let greeting = match payload {
                "" => format!("Welcome, {}!\n\n{HELP}", from.first_name),
                payload => {
                    format!("Welcome, {}! You came here through “{payload}”.\n\n{HELP}", from.first_name)
                }
            };
            (stored.state.clone(), greeting.into())
        }
        Some((Some(Command::Help), _)) => (stored.state.clone(), HELP.into()),
        Some((Some(Command::Cancel), _)) => {
            let reply = if stored.state == State::Idle { "Nothing to cancel." } else { "Cancelled." };
            (State::Idle, reply.into())
        }
        // These leave the dialogue as it is.
        Some((Some(Command::Ban), args)) => return bans::ban(ctx, chat, from, args, true).await,
        Some((Some(Command::Unban), args)) => return bans::ban(ctx, chat, from, args, false).await,
        Some((Some(Command::Broadcast), text)) => return broadcast::start(ctx, chat, from, text).await,
        Some((Some(Command::BroadcastPause), _)) => return broadcast::pause(ctx, chat, from, true).await,
        Some((Some(Command::BroadcastResume), _)) => return broadcast::pause(ctx, chat, from, false).await,
        Some((Some(Command::BroadcastCancel), _)) => return broadcast::cancel(ctx, chat, from).await,
        Some((Some(Command::My), _)) => return posts::list_mine(ctx, chat, from).await,
        _ => posts::on_message(ctx, message, from, &stored.state, invocation).await?,
    };
    // The step is durable before its reply goes out (see `intake::dialogue`).
    ctx.save_dialogue(&key, &stored, &next).await?;
    ctx.say(chat, reply).await
}

async fn on_callback(ctx: &Ctx<'_>, query: &CallbackQuery) -> Result<(), HandleError> {
    let user = ctx.touch_user(&query.from).await?;
    let data = query.data.as_deref().unwrap_or_default();
    let answer = if user.is_banned {
        "You are banned from posting here.".to_owned()
    } else {
        posts::on_button(ctx, query, data).await?
    };
    ctx.answer(query, &answer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_kind_the_parser_cannot_read_is_unreadable_and_a_new_kind_is_not() {
        let message = r#"{"update_id": 1, "message": {"message_id": 2147483648, "date": 0,
            "chat": {"id": 7, "type": "private", "first_name": "A"}, "text": "hi"}}"#;
        let why = read_update(message.as_bytes()).unwrap_err();
        assert!(why.starts_with("a message the parser could not read: "), "{why}");
        let poll = r#"{"update_id": 2, "poll": {"id": 5}}"#;
        assert_eq!(read_update(poll.as_bytes()).unwrap_err(), "a poll the parser could not read");
        let new_kind = read_update(br#"{"update_id": 3, "a_kind_from_next_year": {}}"#).unwrap();
        assert_eq!(kind_name(&new_kind), "unknown");
        assert!(read_update(b"[]").is_err());
    }
}
