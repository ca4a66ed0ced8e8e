//! The Bot API methods the fake answers, each shaped like Telegram's own answer.

use std::time::Instant;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::state::{Failure, Inner, Webhook, now_ms};

/// Telegram's longest message text.
const MAX_TEXT_CHARS: usize = 4096;

pub enum Answer {
    Ok(Value),
    Error { status: StatusCode, description: String, parameters: Option<Value> },
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        match self {
            Answer::Ok(_) => StatusCode::OK,
            Answer::Error { status, .. } => *status,
        }
    }

    fn bad_request(problem: &str) -> Self {
        Answer::Error {
            status: StatusCode::BAD_REQUEST,
            description: format!("Bad Request: {problem}"),
            parameters: None,
        }
    }

    fn too_many_requests(retry_after: u64) -> Self {
        Answer::Error {
            status: StatusCode::TOO_MANY_REQUESTS,
            description: format!("Too Many Requests: retry after {retry_after}"),
            parameters: Some(json!({ "retry_after": retry_after })),
        }
    }
}

/// The methods the fake knows, as Telegram spells them.
const METHODS: &[&str] = &[
    "getMe",
    "setWebhook",
    "getWebhookInfo",
    "deleteWebhook",
    "setMyCommands",
    "getMyCommands",
    "sendMessage",
    "sendPhoto",
    "editMessageText",
    "answerCallbackQuery",
    "getFile",
];

/// Telegram's spelling of a method name, which clients may send in any case (teloxide sends
/// `SendMessage`); unknown names are kept as they came.
pub fn canonical(method: &str) -> String {
    METHODS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(method))
        .map_or_else(|| method.to_owned(), |known| (*known).to_owned())
}

/// Answers one call of `bot_id`; `method` is already [`canonical`].
pub fn answer(inner: &mut Inner, bot_id: i64, method: &str, params: &Value, now: Instant) -> Answer {
    if let Some((failing, failure, times)) = &mut inner.fail_next
        && failing == method
    {
        let failure = *failure;
        *times -= 1;
        if *times == 0 {
            inner.fail_next = None;
        }
        return match failure {
            Failure::TooManyRequests(retry_after) => Answer::too_many_requests(retry_after),
            Failure::Conflict => Answer::Error {
                status: StatusCode::CONFLICT,
                description: "Conflict: terminated by other setWebhook".to_owned(),
                parameters: None,
            },
            Failure::ServerError => Answer::Error {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                description: "Internal Server Error".to_owned(),
                parameters: None,
            },
        };
    }
    let result = match method {
        "getMe" => Ok(bot_user(bot_id, true)),
        "setWebhook" => Ok(set_webhook(inner, bot_id, params)),
        "getWebhookInfo" => Ok(webhook_info(inner, bot_id)),
        "deleteWebhook" => {
            inner.webhooks.remove(&bot_id);
            Ok(json!(true))
        }
        "setMyCommands" => set_my_commands(inner, bot_id, params),
        "getMyCommands" => Ok(inner.commands.get(&bot_id).cloned().unwrap_or_else(|| json!([]))),
        "sendMessage" => send_message(inner, bot_id, params, now),
        "sendPhoto" => send_photo(inner, bot_id, params, now),
        "editMessageText" => edit_message_text(inner, bot_id, params, now),
        "answerCallbackQuery" => match params.get("callback_query_id") {
            Some(_) => Ok(json!(true)),
            None => Err(Answer::bad_request(
                "query is too old and response timeout expired or query ID is invalid",
            )),
        },
        "getFile" => get_file(inner, params),
        _ => Err(Answer::Error {
            status: StatusCode::NOT_FOUND,
            description: "Not Found: method not found".to_owned(),
            parameters: None,
        }),
    };
    match result {
        Ok(value) => Answer::Ok(value),
        Err(answer) => answer,
    }
}

/// Stores an uploaded file and returns its new file_id.
pub fn store_file(inner: &mut Inner, bytes: Vec<u8>) -> String {
    inner.next_file += 1;
    let file_id = format!("fake-file-{}", inner.next_file);
    let unique_id = format!("fake-unique-{}", inner.next_file);
    inner.files.insert(file_id.clone(), (unique_id, bytes));
    file_id
}

fn bot_user(bot_id: i64, full: bool) -> Value {
    let mut user = json!({
        "id": bot_id,
        "is_bot": true,
        "first_name": "Fake Bot",
        "username": format!("fake_{bot_id}_bot"),
    });
    if full {
        user["can_join_groups"] = json!(true);
        user["can_read_all_group_messages"] = json!(false);
        user["supports_inline_queries"] = json!(false);
        user["can_connect_to_business"] = json!(false);
        user["has_main_web_app"] = json!(false);
    }
    user
}

fn chat(id: i64) -> Value {
    match id {
        id if id > 0 => json!({ "id": id, "type": "private", "first_name": "Fake User" }),
        id if id < -1_000_000_000_000 => {
            json!({ "id": id, "type": "supergroup", "title": "Fake Supergroup" })
        }
        id => json!({ "id": id, "type": "group", "title": "Fake Group" }),
    }
}

fn int_param(params: &Value, name: &str) -> Option<i64> {
    match params.get(name)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn str_param<'a>(params: &'a Value, name: &str) -> Option<&'a str> {
    params.get(name).and_then(Value::as_str)
}

/// Whether a send allows a paid broadcast: JSON's `true`, or multipart's text "true".
fn paid(params: &Value) -> bool {
    matches!(params.get("allow_paid_broadcast"), Some(Value::Bool(true)))
        || str_param(params, "allow_paid_broadcast") == Some("true")
}

fn chat_id(params: &Value) -> Result<i64, Answer> {
    int_param(params, "chat_id").ok_or_else(|| Answer::bad_request("chat not found"))
}

fn checked_text<'a>(params: &'a Value, name: &str, required: bool) -> Result<Option<&'a str>, Answer> {
    match str_param(params, name) {
        None | Some("") if required => Err(Answer::bad_request("message text is empty")),
        Some(text) if text.chars().count() > MAX_TEXT_CHARS => {
            Err(Answer::bad_request("message is too long"))
        }
        text => Ok(text.filter(|t| !t.is_empty())),
    }
}

fn new_message(inner: &mut Inner, bot_id: i64, chat_id: i64, params: &Value) -> Value {
    inner.next_message_id += 1;
    let mut message = json!({
        "message_id": inner.next_message_id,
        "date": now_ms() / 1000,
        "chat": chat(chat_id),
        "from": bot_user(bot_id, false),
    });
    // Only inline keyboards come back on the message, as with Telegram.
    if let Some(markup) = params.get("reply_markup").filter(|m| m.get("inline_keyboard").is_some()) {
        message["reply_markup"] = markup.clone();
    }
    message
}

/// Whether a send to `chat_id` may go out now: not blocked, and within the limits.
/// Admits a send within Telegram's limits (a paid broadcast's, if `paid`).
fn admit(inner: &mut Inner, bot_id: i64, chat_id: i64, paid: bool, now: Instant) -> Result<(), Answer> {
    if inner.blocked.contains(&chat_id) {
        return Err(Answer::Error {
            status: StatusCode::FORBIDDEN,
            description: "Forbidden: bot was blocked by the user".to_owned(),
            parameters: None,
        });
    }
    inner.limits.admit(bot_id, chat_id, paid, now).map_err(Answer::too_many_requests)
}

fn send_message(inner: &mut Inner, bot_id: i64, params: &Value, now: Instant) -> Result<Value, Answer> {
    let chat_id = chat_id(params)?;
    let text = checked_text(params, "text", true)?.unwrap_or_default().to_owned();
    admit(inner, bot_id, chat_id, paid(params), now)?;
    let mut message = new_message(inner, bot_id, chat_id, params);
    message["text"] = json!(text);
    Ok(message)
}

fn send_photo(inner: &mut Inner, bot_id: i64, params: &Value, now: Instant) -> Result<Value, Answer> {
    let chat_id = chat_id(params)?;
    let caption = checked_text(params, "caption", false)?.map(str::to_owned);
    let photo =
        str_param(params, "photo").ok_or_else(|| Answer::bad_request("there is no photo in the request"))?;
    if photo.is_empty() || photo.starts_with("http://") || photo.starts_with("https://") {
        return Err(Answer::bad_request("wrong file identifier/HTTP URL specified"));
    }
    let file_id = photo.to_owned();
    if !inner.files.contains_key(&file_id) {
        // A file_id the fake has not seen: accept it, as Telegram accepts ids of files it keeps.
        inner.next_file += 1;
        let unique_id = format!("fake-unique-{}", inner.next_file);
        inner.files.insert(file_id.clone(), (unique_id, file_id.as_bytes().to_vec()));
    }
    admit(inner, bot_id, chat_id, paid(params), now)?;
    let unique_id = inner.files.get(&file_id).map(|(u, _)| u.clone()).unwrap_or_default();
    let mut message = new_message(inner, bot_id, chat_id, params);
    message["photo"] =
        json!([{ "file_id": file_id, "file_unique_id": unique_id, "width": 640, "height": 480 }]);
    if let Some(caption) = caption {
        message["caption"] = json!(caption);
    }
    Ok(message)
}

fn edit_message_text(inner: &mut Inner, bot_id: i64, params: &Value, now: Instant) -> Result<Value, Answer> {
    let text = checked_text(params, "text", true)?.unwrap_or_default().to_owned();
    if params.get("inline_message_id").is_some() {
        return Ok(json!(true));
    }
    let chat_id = chat_id(params)?;
    let message_id =
        int_param(params, "message_id").ok_or_else(|| Answer::bad_request("message to edit not found"))?;
    admit(inner, bot_id, chat_id, false, now)?;
    let mut message = new_message(inner, bot_id, chat_id, params);
    inner.next_message_id -= 1;
    message["message_id"] = json!(message_id);
    message["edit_date"] = json!(now_ms() / 1000);
    message["text"] = json!(text);
    Ok(message)
}

fn get_file(inner: &mut Inner, params: &Value) -> Result<Value, Answer> {
    let file_id = str_param(params, "file_id").unwrap_or_default();
    let (unique_id, bytes) =
        inner.files.get(file_id).ok_or_else(|| Answer::bad_request("invalid file_id"))?;
    Ok(json!({
        "file_id": file_id,
        "file_unique_id": unique_id,
        "file_size": bytes.len(),
        "file_path": format!("files/{file_id}"),
    }))
}

fn set_webhook(inner: &mut Inner, bot_id: i64, params: &Value) -> Value {
    let url = str_param(params, "url").unwrap_or_default().to_owned();
    if url.is_empty() {
        inner.webhooks.remove(&bot_id);
        return json!(true);
    }
    let allowed_updates = match params.get("allowed_updates") {
        Some(Value::Array(kinds)) => kinds.clone(),
        _ => Vec::new(),
    };
    let webhook = Webhook {
        url,
        secret: str_param(params, "secret_token").unwrap_or_default().to_owned(),
        max_connections: int_param(params, "max_connections").map_or(40, |n| n.clamp(1, 100) as u64),
        allowed_updates,
        pending: 0,
        last_error: None,
    };
    inner.webhooks.insert(bot_id, webhook);
    json!(true)
}

/// The default scope's menu only, as botfleet sets it: 1 to 100 commands of 1-32 characters
/// of a-z, 0-9 and _, each described in 1 to 256 characters.
fn set_my_commands(inner: &mut Inner, bot_id: i64, params: &Value) -> Result<Value, Answer> {
    let Some(Value::Array(commands)) = params.get("commands") else {
        return Err(Answer::bad_request("commands not specified"));
    };
    let valid = |c: &Value| {
        let name = c.get("command").and_then(Value::as_str).unwrap_or_default();
        let description = c.get("description").and_then(Value::as_str).unwrap_or_default();
        (1..=32).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && (1..=256).contains(&description.chars().count())
    };
    if commands.len() > 100 || !commands.iter().all(valid) {
        return Err(Answer::bad_request("BOT_COMMAND_INVALID"));
    }
    inner.commands.insert(bot_id, Value::Array(commands.clone()));
    Ok(json!(true))
}

fn webhook_info(inner: &Inner, bot_id: i64) -> Value {
    match inner.webhooks.get(&bot_id) {
        None => json!({ "url": "", "has_custom_certificate": false, "pending_update_count": 0 }),
        Some(webhook) => {
            let mut info = json!({
                "url": webhook.url,
                "has_custom_certificate": false,
                "pending_update_count": webhook.pending,
                "max_connections": webhook.max_connections,
            });
            if let Some((date, message)) = &webhook.last_error {
                info["last_error_date"] = json!(date);
                info["last_error_message"] = json!(message);
            }
            if !webhook.allowed_updates.is_empty() {
                info["allowed_updates"] = json!(webhook.allowed_updates);
            }
            info
        }
    }
}
