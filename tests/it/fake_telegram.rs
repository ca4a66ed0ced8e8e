//! The fake Telegram as teloxide's own client sees it.

use teloxide_core::RequestError;
use teloxide_core::net::Download;
use teloxide_core::payloads::{SendMessageSetters, SetWebhookSetters};
use teloxide_core::prelude::Requester;
use teloxide_core::types::{
    CallbackQueryId, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, MessageId,
};

use crate::helpers::{MAIN_BOT, spawn_fake};

fn client(url: &str) -> teloxide_core::Bot {
    teloxide_core::Bot::new(MAIN_BOT.token).set_api_url(url.parse().unwrap())
}

#[tokio::test]
async fn teloxide_client_round_trip() {
    let (fake, url) = spawn_fake(false).await;
    let bot = client(&url);

    let me = bot.get_me().await.unwrap();
    assert_eq!(me.id.0, MAIN_BOT.id() as u64);
    assert!(me.user.is_bot);

    bot.set_webhook("https://example.org/webhook/main".parse().unwrap())
        .secret_token("s3cret".to_owned())
        .max_connections(7)
        .await
        .unwrap();
    let info = bot.get_webhook_info().await.unwrap();
    assert_eq!(info.url.unwrap().as_str(), "https://example.org/webhook/main");
    assert_eq!(info.max_connections, Some(7));
    bot.delete_webhook().await.unwrap();
    assert!(bot.get_webhook_info().await.unwrap().url.is_none());

    let keyboard = InlineKeyboardMarkup::new([[InlineKeyboardButton::callback("Approve", "approve:1")]]);
    let sent = bot.send_message(ChatId(42), "hello there").reply_markup(keyboard).await.unwrap();
    assert_eq!(sent.text(), Some("hello there"));
    assert_eq!(sent.chat.id, ChatId(42));
    assert!(sent.reply_markup().is_some());
    let edited = bot.edit_message_text(ChatId(42), sent.id, "hello again").await.unwrap();
    assert_eq!((edited.id, edited.text()), (sent.id, Some("hello again")));

    let photo = bot
        .send_photo(ChatId(-100), InputFile::memory(b"fake jpeg bytes".to_vec()).file_name("p.jpg"))
        .await
        .unwrap();
    let file_id = photo.photo().unwrap()[0].file.id.clone();
    let file = bot.get_file(file_id).await.unwrap();
    let mut downloaded = Vec::new();
    bot.download_file(&file.path, &mut downloaded).await.unwrap();
    assert_eq!(downloaded, b"fake jpeg bytes");

    bot.answer_callback_query(CallbackQueryId("query-1".to_owned())).await.unwrap();
    assert!(matches!(bot.edit_message_text(ChatId(42), MessageId(1), "").await, Err(RequestError::Api(_))));

    let methods: Vec<String> = fake.calls().into_iter().map(|c| c.method).collect();
    for method in [
        "getMe",
        "setWebhook",
        "getWebhookInfo",
        "deleteWebhook",
        "sendMessage",
        "editMessageText",
        "sendPhoto",
        "getFile",
        "answerCallbackQuery",
    ] {
        assert!(methods.iter().any(|m| m == method), "{method} not in the call log {methods:?}");
    }
    let log = serde_json::to_string(&fake.calls()).unwrap();
    assert!(!log.contains(MAIN_BOT.token), "the call log must not hold the token");
}

#[tokio::test]
async fn fake_answers_429_with_retry_after_past_telegrams_limits() {
    let (fake, url) = spawn_fake(true).await;
    let bot = client(&url);
    bot.send_message(ChatId(42), "first").await.unwrap();
    match bot.send_message(ChatId(42), "second, too soon").await {
        Err(RequestError::RetryAfter(seconds)) => assert_eq!(seconds.seconds(), 1),
        other => panic!("expected 429 with retry_after, got {other:?}"),
    }
    // Other chats are fine until the bot's 30 per second are spent.
    let mut refused = 0;
    for chat in 1000..1040 {
        if let Err(RequestError::RetryAfter(_)) = bot.send_message(ChatId(chat), "fan-out").await {
            refused += 1;
        }
    }
    assert_eq!(refused, 11, "30 sends a second: 1 + 29 admitted, 11 refused");
    let statuses: Vec<u16> = fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 12);
}

#[tokio::test]
async fn a_send_that_allows_a_paid_broadcast_passes_the_free_rate() {
    let (_fake, url) = spawn_fake(true).await;
    let bot = client(&url);
    let send = |chat: i64, paid: bool| bot.send_message(ChatId(chat), "news").allow_paid_broadcast(paid);
    for chat in 1..=30 {
        send(chat, false).await.unwrap();
    }
    assert!(matches!(send(31, false).await, Err(RequestError::RetryAfter(_))), "the free rate is spent");
    send(31, true).await.expect("a paid broadcast's send goes on (up to 1,000 a second: `limits`)");
    assert!(matches!(send(31, true).await, Err(RequestError::RetryAfter(_))), "still once a second per chat");
    // Multipart sends carry the flag as text.
    let form = reqwest::multipart::Form::new()
        .text("chat_id", "2000")
        .text("photo", "a-file-id")
        .text("allow_paid_broadcast", "true");
    let photo = reqwest::Client::new().post(format!("{url}/bot1:x/sendPhoto")).multipart(form).send();
    assert_eq!(photo.await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_call_log_can_be_awaited_until_enough_calls_matched() {
    let (_fake, url) = spawn_fake(false).await;
    let bot = client(&url);
    let log = format!("{url}/__fake/calls?method=sendMessage&text=wanted&at_least=2&wait_ms=10000");
    let waiting = async { reqwest::get(&log).await.unwrap().json::<serde_json::Value>().await.unwrap() };
    let sending = async {
        bot.send_message(ChatId(1), "wanted").await.unwrap();
        bot.send_message(ChatId(2), "not this one").await.unwrap();
        bot.send_message(ChatId(3), "wanted").await.unwrap();
    };
    let (calls, ()) = tokio::join!(waiting, sending);
    let chats: Vec<i64> =
        calls.as_array().unwrap().iter().filter_map(|c| c["params"]["chat_id"].as_i64()).collect();
    assert_eq!(chats, [1, 3], "the matching calls, once both had arrived");
    // Not enough ever: the answer comes after the wait, with what there is.
    let log = format!("{url}/__fake/calls?text=wanted&at_least=3&wait_ms=50");
    let calls: serde_json::Value = reqwest::get(&log).await.unwrap().json().await.unwrap();
    assert_eq!(calls.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_log_names_the_process_behind_each_call() {
    let (fake, url) = spawn_fake(false).await;
    let token = botfleet::settings::Secret::new(MAIN_BOT.token);
    botfleet::telegram::bot(&token, &url.parse().unwrap()).unwrap().get_me().await.unwrap();
    client(&url).get_me().await.unwrap();
    let clients: Vec<String> = fake.calls().into_iter().map(|c| c.client).collect();
    let ours = format!("botfleet/{} (pid {})", env!("CARGO_PKG_VERSION"), std::process::id());
    assert_eq!(clients[0], ours);
    // Another client (teloxide's own, with no User-Agent) is told apart.
    assert_ne!(clients[1], ours);
}

#[tokio::test]
async fn a_delay_holds_the_call_or_only_its_answer() {
    let (fake, url) = spawn_fake(false).await;
    let http = reqwest::Client::new();
    for (answer, taken_while_held) in [(false, 0), (true, 1)] {
        http.post(format!("{url}/__fake/reset")).send().await.unwrap();
        let delay = serde_json::json!({"method": "sendMessage", "ms": 300, "answer": answer});
        let set = http.post(format!("{url}/__fake/delay")).json(&delay).send().await.unwrap();
        assert_eq!(set.status(), 204);
        let bot = client(&url);
        let sending = tokio::spawn(async move { bot.send_message(ChatId(42), "held").await });
        tokio::time::timeout(std::time::Duration::from_secs(10), fake.held(if answer { 2 } else { 1 }))
            .await
            .expect("the call never arrived");
        assert_eq!(fake.calls().len(), taken_while_held, "answer: {answer}");
        sending.await.unwrap().unwrap();
        assert_eq!(fake.calls().len(), 1);
    }
}
