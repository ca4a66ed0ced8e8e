//! What a handler has in hand for one update ([`Ctx`]), and the effects it may cause through
//! it: the user's row, the dialogue, publishing, and messages, each within Telegram's limits.
//! A reply comes after the effects it reports, the dialogue's new state included: a failure
//! before it leaves nothing said, so that Telegram's redelivery does not say it twice.

use std::sync::Arc;

use teloxide_core::RequestError;
use teloxide_core::payloads::{self, AnswerCallbackQuerySetters};
use teloxide_core::prelude::Requester;
use teloxide_core::types::{CallbackQuery, InlineKeyboardMarkup, MessageId, Update, UpdateKind, User};

use super::dialogue::State;
use super::error::HandleError;
use crate::feed::publish::{self, Publisher};
use crate::feed::{Author, PostView};
use crate::intake::Turn;
use crate::intake::dialogue::{DialogueError, Dialogues, Stored};
use crate::kv::{Conn, FeedKeys};
use crate::metrics::Metrics;
use crate::store::PostWriter;
use crate::store::posts;
use crate::store::user_cache::{CachedUser, Users};
use crate::store::users::Profile;
use crate::telegram::flood::{Flood, Urgency};
use crate::telegram::refusals::{self, Verdict};
use crate::telegram::{self, Client, outbox, redact};
use crate::types::{BotId, ChatId, UpdateId, UserId};

/// What the bot's behaviour needs of the process it runs in: storage, the sending path and
/// the feed, shared by every update.
pub struct Services {
    pub db: deadpool_postgres::Pool,
    pub metrics: Arc<Metrics>,
    pub users: Arc<Users>,
    pub dialogues: Dialogues,
    /// Every message the bot sends goes out through here, within Telegram's limits.
    pub flood: Arc<Flood>,
    /// New posts go to the primary through here, in batches.
    pub posts: PostWriter,
    pub feed_keys: Arc<FeedKeys>,
    /// Published posts go to the API nodes through here, in batches.
    pub publisher: Publisher,
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
    pub services: &'a Services,
    /// The update's Redis connection (multiplexed: clones share it).
    pub redis: Conn,
    pub bot: &'a Client,
    pub turn: &'a Turn,
    pub update_id: UpdateId,
    /// What the update is (`bot::identity`): its effects are keyed by it, not by its id.
    pub origin: &'a str,
    /// The message this update brought, until the first message sent back into its chat
    /// quotes it: each message gets one reply that names it, which is how an audit of a replay
    /// tells a reply sent twice (a duplicate) from two updates' replies.
    quote: std::sync::Mutex<Option<(ChatId, MessageId)>>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        services: &'a Services,
        redis: Conn,
        bot: &'a Client,
        turn: &'a Turn,
        (update, origin): (&Update, &'a str),
    ) -> Self {
        let quote = match &update.kind {
            UpdateKind::Message(message) => Some((message.chat.id.into(), message.id)),
            _ => None,
        };
        let update_id = update.id.into();
        Ctx { services, redis, bot, turn, update_id, origin, quote: std::sync::Mutex::new(quote) }
    }

    pub fn conn(&self) -> Conn {
        self.redis.clone()
    }

    pub fn bot_id(&self) -> BotId {
        self.bot.config.id
    }

    pub fn is_admin(&self, user: &User) -> bool {
        self.bot.config.admins.contains(&UserId::from(user))
    }

    /// Brings the user's row up to date through the cache; tells whether they are banned.
    pub async fn touch_user(&self, user: &User) -> Result<CachedUser, HandleError> {
        let profile = Profile {
            first_name: user.first_name.clone(),
            last_name: user.last_name.clone(),
            username: user.username.clone(),
            language_code: user.language_code.clone(),
        };
        let key = self.bot.keys.user(UserId::from(user));
        let seen = self.turn.user_read(&key);
        Ok(self
            .services
            .users
            .touch(&mut self.conn(), &key, seen, (self.bot_id(), UserId::from(user)), profile)
            .await?)
    }

    /// The chat's dialogue, as read with the turn if it was.
    pub async fn dialogue(&self, key: &str) -> Result<Stored<State>, HandleError> {
        Ok(self.services.dialogues.load(&mut self.conn(), key, self.turn, self.update_id).await?)
    }

    pub async fn save_dialogue(
        &self,
        key: &str,
        read: &Stored<State>,
        next: &State,
    ) -> Result<(), HandleError> {
        let saved = self.services.dialogues.save(&mut self.conn(), key, read, next, self.turn).await;
        if matches!(saved, Err(DialogueError::Conflict)) {
            self.services
                .metrics
                .dialogue_conflicts
                .with_label_values(&[self.bot.config.name.as_str()])
                .inc();
        }
        Ok(saved?)
    }

    /// Fails once the chat's turn may be another worker's: checked before every durable effect
    /// (see `Turn::fence`).
    pub fn fenced(&self) -> Result<(), HandleError> {
        Ok(self.turn.fence()?)
    }

    /// Posts left the feed (committed already): cached pages go stale, lagging replicas unread.
    pub async fn removed(&self) -> Result<(), HandleError> {
        self.fenced()?;
        let position = posts::wal_position(&self.services.db).await?;
        publish::invalidate(&mut self.conn(), &self.services.feed_keys, position)
            .await
            .map_err(HandleError::Unavailable)
    }

    /// Publishes a committed, published post to the API nodes (once, however often called);
    /// `wal_position` is the primary's after its commit, which replicas must have replayed to be
    /// read for the feed.
    pub async fn publish(&self, post: PostView, wal_position: i64) -> Result<(), HandleError> {
        self.fenced()?;
        let publisher = &self.services.publisher;
        let published =
            publisher.publish(self.conn(), post, wal_position).await.map_err(HandleError::Unavailable)?;
        if published.is_some() {
            self.services.metrics.publishes.with_label_values(&[self.bot.config.name.as_str()]).inc();
        }
        Ok(())
    }

    pub async fn say(&self, chat: ChatId, reply: impl Into<Reply>) -> Result<(), HandleError> {
        self.say_message(chat, reply).await.map(drop)
    }

    /// Like [`Ctx::say`], with the sent message's id (`None` if Telegram refused it for good).
    pub async fn say_message(
        &self,
        chat: ChatId,
        reply: impl Into<Reply>,
    ) -> Result<Option<MessageId>, HandleError> {
        let Reply { text, buttons } = reply.into();
        let quote = self.quote(chat);
        self.send("sendMessage", chat, || {
            let mut payload = payloads::SendMessage::new(chat, text.clone());
            payload.reply_parameters = quote.clone();
            payload.reply_markup = buttons.clone().map(Into::into);
            telegram::SendMessage(payload).request(&self.bot.api)
        })
        .await
    }

    /// Quotes the update's message in the first message sent back into its chat (see
    /// `Ctx::quote`); Telegram sends it all the same if the message is gone.
    fn quote(&self, chat: ChatId) -> Option<teloxide_core::types::ReplyParameters> {
        let mut quote = self.quote.lock().unwrap_or_else(|p| p.into_inner());
        let (quoted_chat, message) = (*quote)?;
        (quoted_chat == chat).then(|| {
            *quote = None;
            teloxide_core::types::ReplyParameters::new(message).allow_sending_without_reply()
        })
    }

    pub async fn edit(
        &self,
        chat: ChatId,
        message: MessageId,
        text: impl Into<String>,
    ) -> Result<(), HandleError> {
        let text = text.into();
        self.send("editMessageText", chat, || self.bot.api.edit_message_text(chat, message, text.clone()))
            .await
            .map(drop)
    }

    /// Queues a message that is not the reply to this update in the outbox, once per `id`: it
    /// goes out however this update's handling ends, and Postgres keeps it until it did, should
    /// Redis lose it (see `telegram::outbox`).
    pub async fn notify(
        &self,
        id: &str,
        chat: ChatId,
        text: &str,
        buttons: Option<&InlineKeyboardMarkup>,
    ) -> Result<(), HandleError> {
        self.fenced()?;
        let message = outbox::Message { id, chat, text, buttons };
        Ok(outbox::notify(&self.services.db, &mut self.conn(), &self.bot.keys, self.bot_id(), &message)
            .await?)
    }

    /// A message to `chat`, within Telegram's limits (see `telegram::flood`).
    async fn send<T, R>(
        &self,
        method: &str,
        chat: ChatId,
        call: impl Fn() -> R,
    ) -> Result<Option<T>, HandleError>
    where
        R: std::future::IntoFuture<Output = Result<T, RequestError>>,
    {
        self.fenced()?;
        let name = self.bot.config.name.as_str();
        let flood = &self.services.flood;
        let sent = flood.send(&mut self.conn(), (&self.bot.keys, name), chat, Urgency::Reply, call).await;
        let result = sent?;
        if let Err(e) = &result {
            let users = &self.services.users;
            refusals::refused(users, &mut self.conn(), &self.bot.keys, (self.bot_id(), chat), e).await?;
        }
        self.outcome(method, result)
    }

    /// A callback query's answer: no message, so it takes no moment of the limits, but it waits
    /// out the bot's pause all the same (see `Flood::unmetered`).
    pub async fn answer(&self, query: &CallbackQuery, text: &str) -> Result<(), HandleError> {
        self.fenced()?;
        let call = self.bot.api.answer_callback_query(query.id.clone()).text(text.to_owned());
        let result = self.services.flood.unmetered(&mut self.conn(), &self.bot.keys, call).await?;
        self.outcome("answerCallbackQuery", result).map(drop)
    }

    /// Counts a Bot API call. A refusal by Telegram (blocked by the user, chat not found) cannot
    /// succeed on redelivery, so it is logged and the update still acknowledged; a network
    /// error, 5xx or 429 asks Telegram to redeliver.
    fn outcome<T>(&self, method: &str, result: Result<T, RequestError>) -> Result<Option<T>, HandleError> {
        let verdict = Verdict::of(&result);
        self.services.metrics.bot_api_calls.with_label_values(&[method, verdict.label()]).inc();
        match result {
            Ok(value) => Ok(Some(value)),
            Err(e) if verdict == Verdict::Refused => {
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

pub fn author_of(user: &User) -> Author {
    Author { first_name: user.first_name.clone(), username: user.username.clone() }
}
