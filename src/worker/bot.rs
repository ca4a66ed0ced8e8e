//! The bot's behaviour: what each update does. Handlers are small and return once every
//! effect is durable; the webhook answers Telegram only after that.

use std::sync::Arc;

use teloxide_core::RequestError;
use teloxide_core::prelude::Requester;
use teloxide_core::types::{ChatId, Message, Update, UpdateKind};

use super::store::{self, NewPost};
use super::{BotRuntime, WorkerState};
use crate::domain::PostText;
use crate::telegram::redact;

/// Why an update could not be handled now. Either way Telegram redelivers it.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Postgres, Redis or Telegram is unreachable: answer 503 with `Retry-After`.
    #[error("dependency unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Anything else.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<store::StoreError> for HandleError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::Unavailable(e) => HandleError::Unavailable(e),
            store::StoreError::Other(e) => HandleError::Failed(e),
        }
    }
}

const HELP: &str = "Send me a text of 10 to 2000 characters and I will publish it on the public feed.\n\n\
/start — welcome\n/help — this message";

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

pub async fn handle(state: WorkerState, bot: Arc<BotRuntime>, update: Update) -> Result<(), HandleError> {
    let update_id = i64::from(update.id.0);
    match &update.kind {
        UpdateKind::Message(message) if message.chat.is_private() => {
            if let Some(text) = message.text() {
                return on_private_text(&state, &bot, update_id, message, text).await;
            }
        }
        _ => {}
    }
    state.metrics.updates_ignored.with_label_values(&[bot.config.name.as_str(), kind_name(&update)]).inc();
    Ok(())
}

#[tracing::instrument(skip_all, fields(bot = %bot.config.name, update_id))]
async fn on_private_text(
    state: &WorkerState,
    bot: &BotRuntime,
    update_id: i64,
    message: &Message,
    text: &str,
) -> Result<(), HandleError> {
    let chat = message.chat.id;
    let reply = if let Some(command) = text.strip_prefix('/') {
        match command.split_whitespace().next().unwrap_or_default() {
            "start" => format!("Welcome! {HELP}"),
            "help" => HELP.to_owned(),
            _ => "I do not know that command. /help lists what I can do.".to_owned(),
        }
    } else {
        match PostText::parse(text) {
            Err(why) => format!("Not posted: {why}."),
            Ok(text) => {
                let Some(author) = message.from.as_ref() else {
                    return Ok(());
                };
                let post = NewPost { bot_id: bot.config.id, update_id, chat_id: chat.0, author, text: &text };
                let id = store::insert_published_post(&state.db, &post).await?;
                state.metrics.posts_created.with_label_values(&[bot.config.name.as_str()]).inc();
                format!("Published as post #{id}.")
            }
        }
    };
    send(state, bot, chat, reply).await
}

/// Sends a message through the Bot API, counting the call. A refusal by Telegram (blocked by
/// the user, chat not found) cannot succeed on redelivery, so it is logged and the update is
/// still acknowledged; a network error, 5xx or 429 asks Telegram to redeliver.
async fn send(state: &WorkerState, bot: &BotRuntime, chat: ChatId, text: String) -> Result<(), HandleError> {
    let result = bot.api.send_message(chat, text).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(RequestError::RetryAfter(_)) => "retry_after",
        Err(RequestError::Api(_)) => "refused",
        Err(_) => "error",
    };
    state.metrics.bot_api_calls.with_label_values(&["sendMessage", outcome]).inc();
    match result {
        Ok(_) => Ok(()),
        Err(RequestError::Api(e)) => {
            tracing::warn!(error = %e, "Telegram refused the reply; not retrying");
            Ok(())
        }
        Err(e) => {
            let message = redact(&e.to_string(), &bot.config.token);
            Err(HandleError::Unavailable(anyhow::anyhow!("sendMessage failed: {message}")))
        }
    }
}
