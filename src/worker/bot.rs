//! The bot's behaviour: what each update does. This file dispatches updates and holds the
//! replies; the posting flows (quick posts, the `/post` dialogue, `/my`, moderation) are in
//! `posts.rs`. Handlers return once every effect is durable; the webhook answers after that.
//! A reply comes after the effects it reports, the dialogue's new state included: a failure
//! before it leaves nothing said, so that Telegram's redelivery does not say it twice.

use std::sync::Arc;

use teloxide_core::RequestError;
use teloxide_core::payloads::{self, AnswerCallbackQuerySetters};
use teloxide_core::prelude::Requester;
use teloxide_core::types::{
    CallbackQuery, ChatId, InlineKeyboardMarkup, Message, MessageId, Update, UpdateKind, User,
};

use super::dialogue::{DialogueError, State, Stored};
use super::flood::Urgency;
use super::intake::{ReadAhead, Turn};
use super::store::{self, Profile, StoreError};
use super::users::{self, CachedUser};
use super::{BotRuntime, WorkerState};
use super::{broadcast, flood, outbox, posts};
use crate::feed::{self, Author, PostView};
use crate::kv::{BotKeys, Conn};
use crate::telegram::{self, redact};

/// Why an update could not be handled now. Either way Telegram redelivers it.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Postgres, Redis or Telegram is unreachable: answer 503 with `Retry-After`; this does
    /// not count towards dead-lettering, since the update is not at fault.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Anything else: counted, and dead-lettered after too many attempts.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<StoreError> for HandleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(e) => HandleError::Unavailable(e),
            StoreError::Other(e) => HandleError::Failed(e),
        }
    }
}

impl From<DialogueError> for HandleError {
    fn from(e: DialogueError) -> Self {
        match e {
            DialogueError::Redis(e) => HandleError::Unavailable(e),
            DialogueError::Conflict => HandleError::Failed(e.into()),
        }
    }
}

pub const HELP: &str = "Send me a text of 10 to 2000 characters and I will publish it on the public feed. \
A photo with a caption becomes a photo post.\n\n\
/post — write a post step by step, with an optional photo\n\
/my — your posts, and delete one\n\
/cancel — stop what you are doing\n\
/help — this message";

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

/// The keys the update's handler reads first, read with its turn in one round trip.
pub fn read_ahead(update: &Update, keys: &BotKeys) -> Option<ReadAhead> {
    let (user, dialogue_chat) = match &update.kind {
        UpdateKind::Message(m) if m.chat.is_private() => (m.from.as_ref()?, m.chat.id.0),
        // Buttons that use a dialogue are pressed in the user's private chat.
        UpdateKind::CallbackQuery(q) => (&q.from, user_id(&q.from)),
        _ => return None,
    };
    Some(ReadAhead { user: keys.user(user_id(user)), dialogue: keys.dialogue(dialogue_chat) })
}

/// A message the bot sends into a chat, with buttons or without.
pub struct Reply {
    pub text: String,
    pub buttons: Option<InlineKeyboardMarkup>,
}

impl Reply {
    pub fn with_buttons(text: impl Into<String>, buttons: InlineKeyboardMarkup) -> Self {
        Reply { text: text.into(), buttons: Some(buttons) }
    }
}

impl From<String> for Reply {
    fn from(text: String) -> Self {
        Reply { text, buttons: None }
    }
}

impl From<&str> for Reply {
    fn from(text: &str) -> Self {
        text.to_owned().into()
    }
}

/// Everything a handler needs about the update in hand.
pub struct Ctx<'a> {
    pub state: &'a WorkerState,
    /// The update's Redis connection (multiplexed: clones share it).
    pub redis: Conn,
    pub bot: &'a BotRuntime,
    pub turn: &'a Turn,
    pub update_id: i64,
    /// The message this update brought, until the first message sent back into its chat
    /// quotes it: each message gets one reply that names it, which is how an audit of a replay
    /// tells a reply sent twice (a duplicate) from two updates' replies.
    quote: std::sync::Mutex<Option<(i64, MessageId)>>,
}

pub async fn handle(
    state: &WorkerState,
    redis: &Conn,
    bot: &Arc<BotRuntime>,
    turn: &Turn,
    update: &Update,
) -> Result<(), HandleError> {
    let quote = match &update.kind {
        UpdateKind::Message(message) => Some((message.chat.id.0, message.id)),
        _ => None,
    };
    let ctx = Ctx {
        state,
        redis: redis.clone(),
        bot,
        turn,
        update_id: i64::from(update.id.0),
        quote: std::sync::Mutex::new(quote),
    };
    match &update.kind {
        UpdateKind::Message(message) if message.chat.is_private() => on_private_message(&ctx, message).await,
        UpdateKind::EditedMessage(message) if message.chat.is_private() => {
            posts::on_edit(&ctx, message).await
        }
        UpdateKind::CallbackQuery(query) => on_callback(&ctx, query).await,
        _ => {
            ctx.state
                .metrics
                .updates_ignored
                .with_label_values(&[bot.config.name.as_str(), kind_name(update)])
                .inc();
            Ok(())
        }
    }
}

/// `/name@bot args` → (`name`, `args`).
fn command(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix('/')?;
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let name = word.split('@').next().unwrap_or(word);
    Some((name, args.trim()))
}

async fn on_private_message(ctx: &Ctx<'_>, message: &Message) -> Result<(), HandleError> {
    let Some(from) = message.from.as_ref() else {
        return Ok(());
    };
    let user = ctx.touch_user(from).await?;
    let chat = message.chat.id.0;
    if user.is_banned {
        return ctx.say(chat, "You are banned from posting here.").await;
    }
    let key = ctx.bot.keys.dialogue(chat);
    let stored = ctx.dialogue(&key).await?;
    let text = message.text().unwrap_or_default();
    let (next, reply) = match command(text) {
        Some(("start", payload)) => {
            let greeting = match payload {
                "" => format!("Welcome, {}!\n\n{HELP}", from.first_name),
                payload => {
                    format!("Welcome, {}! You came here through “{payload}”.\n\n{HELP}", from.first_name)
                }
            };
            (stored.state.clone(), greeting.into())
        }
        Some(("help", _)) => (stored.state.clone(), HELP.into()),
        Some(("cancel", _)) => {
            let reply = if stored.state == State::Idle { "Nothing to cancel." } else { "Cancelled." };
            (State::Idle, reply.into())
        }
        // These leave the dialogue as it is.
        Some(("ban", args)) => return ctx.ban(chat, from, args, true).await,
        Some(("unban", args)) => return ctx.ban(chat, from, args, false).await,
        Some(("broadcast", text)) => return broadcast::start(ctx, chat, from, text).await,
        Some(("broadcast_cancel", _)) => return broadcast::cancel(ctx, chat, from).await,
        Some(("my", _)) => return posts::list_mine(ctx, chat, from).await,
        _ => posts::on_message(ctx, message, from, &stored.state).await?,
    };
    // The step is durable before its reply goes out (see `dialogue.rs`).
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

impl Ctx<'_> {
    pub fn conn(&self) -> Conn {
        self.redis.clone()
    }

    fn bot_id(&self) -> i64 {
        self.bot.config.id
    }

    pub fn is_admin(&self, user: &User) -> bool {
        self.bot.config.admins.contains(&user_id(user))
    }

    /// Brings the user's row up to date through the cache; tells whether they are banned.
    pub async fn touch_user(&self, user: &User) -> Result<CachedUser, HandleError> {
        let profile = Profile {
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            username: user.username.clone(),
            language_code: user.language_code.clone(),
        };
        let key = self.bot.keys.user(user_id(user));
        let seen = self.turn.user_read(&key);
        Ok(self
            .state
            .users
            .touch(&mut self.conn(), &key, seen, (self.bot_id(), user_id(user)), profile)
            .await?)
    }

    /// The chat's dialogue, as read with the turn if it was.
    pub async fn dialogue(&self, key: &str) -> Result<Stored, HandleError> {
        match self.turn.dialogue_read(key) {
            Some(fields) => Ok(Stored::read(fields, self.update_id)),
            None => Ok(self.state.dialogues.load(&mut self.conn(), key, self.update_id).await?),
        }
    }

    pub async fn save_dialogue(&self, key: &str, read: &Stored, next: &State) -> Result<(), HandleError> {
        let saved = self.state.dialogues.save(&mut self.conn(), key, read, next, self.turn).await;
        if matches!(saved, Err(DialogueError::Conflict)) {
            self.state.metrics.dialogue_conflicts.with_label_values(&[self.bot.config.name.as_str()]).inc();
        }
        Ok(saved?)
    }

    /// `/ban <user id>` and `/unban <user id>`, for the bot's admins.
    async fn ban(&self, chat: i64, from: &User, args: &str, banned: bool) -> Result<(), HandleError> {
        if !self.is_admin(from) {
            return self.say(chat, "Only the bot's admins may do that.").await;
        }
        let Ok(target) = args.parse::<i64>() else {
            let usage = if banned { "/ban <user id>" } else { "/unban <user id>" };
            return self.say(chat, format!("Usage: {usage}")).await;
        };
        if !store::set_banned(&self.state.db, self.bot_id(), target, banned).await? {
            return self.say(chat, format!("I have never seen user {target}.")).await;
        }
        self.state.users.invalidate(&mut self.conn(), &self.bot.keys, target).await?;
        // Their posts leave (or return to) every feed page at once.
        self.removed().await?;
        let done = if banned { "banned: their posts left the feed" } else { "unbanned" };
        self.say(chat, format!("User {target} {done}.")).await
    }

    /// Posts left the feed (committed already): cached pages go stale, lagging replicas unread.
    pub async fn removed(&self) -> Result<(), HandleError> {
        let position = store::wal_position(&self.state.db).await?;
        feed::invalidate(&mut self.conn(), &self.state.feed_keys, position)
            .await
            .map_err(HandleError::Unavailable)
    }

    /// Publishes a committed, published post to the API nodes (once, however often called).
    pub async fn publish(&self, post: PostView) -> Result<(), HandleError> {
        let published =
            self.state.publisher.publish(self.conn(), post).await.map_err(HandleError::Unavailable)?;
        if published.is_some() {
            self.state.metrics.publishes.with_label_values(&[self.bot.config.name.as_str()]).inc();
        }
        Ok(())
    }

    pub async fn say(&self, chat: i64, reply: impl Into<Reply>) -> Result<(), HandleError> {
        self.say_message(chat, reply).await.map(drop)
    }

    /// Like [`Ctx::say`], with the sent message's id (`None` if Telegram refused it for good).
    pub async fn say_message(
        &self,
        chat: i64,
        reply: impl Into<Reply>,
    ) -> Result<Option<MessageId>, HandleError> {
        let Reply { text, buttons } = reply.into();
        let quote = self.quote(chat);
        self.send("sendMessage", chat, || {
            let mut payload = payloads::SendMessage::new(ChatId(chat), text.clone());
            payload.reply_parameters = quote.clone();
            payload.reply_markup = buttons.clone().map(Into::into);
            telegram::SendMessage(payload).request(&self.bot.api)
        })
        .await
    }

    /// Quotes the update's message in the first message sent back into its chat (see
    /// `Ctx::quote`); Telegram sends it all the same if the message is gone.
    fn quote(&self, chat: i64) -> Option<teloxide_core::types::ReplyParameters> {
        let mut quote = self.quote.lock().unwrap_or_else(|p| p.into_inner());
        let (quoted_chat, message) = (*quote)?;
        (quoted_chat == chat).then(|| {
            *quote = None;
            teloxide_core::types::ReplyParameters::new(message).allow_sending_without_reply()
        })
    }

    pub async fn edit(
        &self,
        chat: i64,
        message: MessageId,
        text: impl Into<String>,
    ) -> Result<(), HandleError> {
        let text = text.into();
        self.send("editMessageText", chat, || {
            self.bot.api.edit_message_text(ChatId(chat), message, text.clone())
        })
        .await
        .map(drop)
    }

    /// Queues a message that is not the reply to this update in the outbox, once per `id`: it
    /// goes out however this update's handling ends (see `outbox.rs`).
    pub async fn notify(
        &self,
        id: &str,
        chat: i64,
        text: &str,
        buttons: Option<&InlineKeyboardMarkup>,
    ) -> Result<(), HandleError> {
        let message = outbox::Message { id, chat, text, buttons, broadcast: None };
        outbox::add(&mut self.conn(), &self.bot.keys, &message)
            .await
            .map(drop)
            .map_err(HandleError::Unavailable)
    }

    /// A message to `chat`, within Telegram's limits (see `flood.rs`).
    async fn send<T, R>(
        &self,
        method: &str,
        chat: i64,
        call: impl Fn() -> R,
    ) -> Result<Option<T>, HandleError>
    where
        R: std::future::IntoFuture<Output = Result<T, RequestError>>,
    {
        let name = self.bot.config.name.as_str();
        let flood = &self.state.flood;
        let sent = flood.send(&mut self.conn(), (&self.bot.keys, name), chat, Urgency::Reply, call).await;
        let result = sent.map_err(|e| HandleError::Unavailable(e.into()))?;
        if let Err(e) = &result {
            users::refused(&self.state.db, &mut self.conn(), &self.bot.keys, (self.bot_id(), chat), e)
                .await?;
        }
        self.outcome(method, result)
    }

    /// A callback query's answer is no message (it takes no moment of the limits) but waits out
    /// a pause after a 429 all the same, and a 429 of its own pauses the bot.
    async fn answer(&self, query: &CallbackQuery, text: &str) -> Result<(), HandleError> {
        let (mut conn, pause_key) = (self.conn(), self.bot.keys.flood_pause());
        let unavailable = |e: redis::RedisError| HandleError::Unavailable(e.into());
        if self.state.flood.enabled()
            && let Some(wait) = telegram::paused(&mut conn, &pause_key).await.map_err(unavailable)?
        {
            if wait > self.state.flood.limits.max_wait {
                return Err(HandleError::Unavailable(anyhow::anyhow!("Telegram asked to wait {wait:?}")));
            }
            tokio::time::sleep(wait).await;
        }
        let result = self.bot.api.answer_callback_query(query.id.clone()).text(text.to_owned()).await;
        if let Err(RequestError::RetryAfter(after)) = &result
            && self.state.flood.enabled()
        {
            telegram::pause(&mut conn, &pause_key, after.duration()).await.map_err(unavailable)?;
        }
        self.outcome("answerCallbackQuery", result).map(drop)
    }

    /// Counts a Bot API call. A refusal by Telegram (blocked by the user, chat not found) cannot
    /// succeed on redelivery, so it is logged and the update still acknowledged; a network
    /// error, 5xx or 429 asks Telegram to redeliver.
    fn outcome<T>(&self, method: &str, result: Result<T, RequestError>) -> Result<Option<T>, HandleError> {
        // Telegram's own 5xx comes as an API error too, but may pass.
        let refused = matches!(&result, Err(e @ RequestError::Api(_)) if !flood::is_transient(e));
        let label = match &result {
            Ok(_) => "ok",
            Err(RequestError::RetryAfter(_)) => "retry_after",
            Err(_) if refused => "refused",
            Err(_) => "error",
        };
        self.state.metrics.bot_api_calls.with_label_values(&[method, label]).inc();
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if refused => {
                tracing::warn!(method, error = %e, "Telegram refused a call; not retrying");
                Ok(None)
            }
            Err(e) => {
                let message = redact(&e.to_string(), &self.bot.config.token);
                Err(HandleError::Unavailable(anyhow::anyhow!("{method} failed: {message}")))
            }
        }
    }
}

pub fn user_id(user: &User) -> i64 {
    // Telegram's ids fit in 52 bits.
    user.id.0 as i64
}

pub fn author_of(user: &User) -> Author {
    Author { first_name: user.first_name.clone(), username: user.username.clone() }
}
