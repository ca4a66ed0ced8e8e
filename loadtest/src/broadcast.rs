//! `loadtest broadcast`: an admin's `/broadcast` through the webhook, then the rate at which
//! the fake Telegram received its messages, against the rate the flood control allows.
//!
//! The rate runs from the first message's arrival to the last's, by the fake's own clock.

use std::collections::HashSet;

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub struct Broadcast {
    pub webhook_url: String,
    pub secret: String,
    pub telegram_url: String,
    /// Users the broadcast must reach (the admin is one of them).
    pub recipients: usize,
    /// Messages per second the bot may send.
    pub allowed: f64,
    /// A paid broadcast (`/broadcast --paid`).
    pub paid: bool,
    pub update_id: i64,
}

pub async fn run(b: Broadcast) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let text = format!("broadcast {} to every reader", b.update_id);
    let admin = json!({ "id": 1, "is_bot": false, "first_name": "Admin" });
    let update = json!({
        "update_id": b.update_id,
        "message": {
            "message_id": b.update_id, "date": 1_790_000_000,
            "text": format!("/broadcast {}{text}", if b.paid { "--paid " } else { "" }),
            "chat": { "id": 1, "type": "private", "first_name": "Admin" }, "from": admin,
        }
    });
    let answer = http
        .post(&b.webhook_url)
        .header("x-telegram-bot-api-secret-token", &b.secret)
        .header("content-type", "application/json")
        .body(update.to_string())
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!("the webhook answered {} to /broadcast", answer.status());
    }
    // The fake answers once every recipient has the message, or after twice the time the
    // limits allow and a minute more: then whatever arrived is the result.
    let wait_ms = ((b.recipients as f64 / b.allowed * 2.0 + 60.0) * 1000.0) as u64;
    let url = format!("{}/__fake/calls", b.telegram_url);
    let query = [
        ("method", "sendMessage".to_owned()),
        ("text", text.clone()),
        ("at_least", b.recipients.to_string()),
        ("wait_ms", wait_ms.to_string()),
    ];
    let body = http.get(&url).query(&query).send().await?.bytes().await?;
    let ours: Vec<Value> = serde_json::from_slice(&body).context("reading the fake's calls")?;
    let sent: Vec<(i64, u64)> = ours
        .iter()
        .filter(|c| c["status"] == 200)
        .filter_map(|c| Some((c["params"]["chat_id"].as_i64()?, c["at_ms"].as_u64()?)))
        .collect();
    let distinct: HashSet<i64> = sent.iter().map(|(chat, _)| *chat).collect();
    let (first, last) = (sent.iter().map(|s| s.1).min(), sent.iter().map(|s| s.1).max());
    let seconds = match (first, last) {
        (Some(first), Some(last)) => (last - first) as f64 / 1000.0,
        _ => 0.0,
    };
    let rate = if seconds > 0.0 { (sent.len() - 1) as f64 / seconds } else { 0.0 };
    Ok(json!({
        "workload": "broadcast",
        "recipients": b.recipients,
        "sent": sent.len(),
        "reached": distinct.len(),
        "duplicates": sent.len() - distinct.len(),
        "refused": ours.len() - sent.len(),
        "seconds": seconds,
        "rate": rate,
        "allowed": b.allowed,
        "ratio": rate / b.allowed,
    }))
}
