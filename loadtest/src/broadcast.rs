//! `loadtest broadcast`: an admin's `/broadcast` through the webhook, then the rate at which
//! the fake Telegram received its messages, against the rate the flood control allows.
//!
//! The rate runs from the first message's arrival to the last's (the fake's own clock), so how
//! often this driver looks at the fake's call log does not change the figure.

use std::collections::HashSet;
use std::time::{Duration, Instant};

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
    pub update_id: i64,
}

pub async fn run(b: Broadcast) -> anyhow::Result<Value> {
    let http = reqwest::Client::new();
    let text = format!("broadcast {} to every reader", b.update_id);
    let admin = json!({ "id": 1, "is_bot": false, "first_name": "Admin" });
    let update = json!({
        "update_id": b.update_id,
        "message": {
            "message_id": b.update_id, "date": 1_790_000_000, "text": format!("/broadcast {text}"),
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
    // Twice the time the limits allow, and a minute more: then whatever arrived is the result.
    let deadline = Instant::now() + Duration::from_secs_f64(b.recipients as f64 / b.allowed * 2.0 + 60.0);
    let ours = loop {
        let url = format!("{}/__fake/calls?method=sendMessage", b.telegram_url);
        let body = http.get(&url).send().await?.bytes().await?;
        let calls: Vec<Value> = serde_json::from_slice(&body).context("reading the fake's calls")?;
        let ours: Vec<Value> = calls.into_iter().filter(|c| c["params"]["text"] == text).collect();
        let sent = ours.iter().filter(|c| c["status"] == 200).count();
        if sent >= b.recipients || Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
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
