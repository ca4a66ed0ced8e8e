//! Hostile input against the webhook and the API, each with the answer SECURITY.md documents:
//! a clear status, a JSON error that leaks nothing, nothing written, and the process still
//! serving the next honest request.

use serde_json::{Value, json};

use crate::helpers::{
    MAIN_BOT, Stack, TestDb, deliver, deliver_update, spawn_fake, spawn_worker, text_update, unique,
};

#[tokio::test]
async fn the_webhook_refuses_hostile_bodies_and_secrets_and_keeps_serving() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    let honest = text_update(1, 42, "an honest post after all that");

    // Secrets: overlong, the right one with more after it, the right one's prefix → 401.
    let overlong = "s".repeat(10_000);
    let longer = format!("{}x", MAIN_BOT.secret);
    let prefix = &MAIN_BOT.secret[..MAIN_BOT.secret.len() - 1];
    for secret in [overlong.as_str(), longer.as_str(), prefix] {
        let response = deliver(&worker, &MAIN_BOT, Some(secret), honest.to_string()).await;
        assert_eq!(response.status(), 401, "secret of {} bytes", secret.len());
    }
    // Whatever an authenticated body holds that cannot be handled as what it is, it is kept whole
    // as a dead letter and acknowledged (a 4xx would have Telegram redeliver it for a day):
    // deeply nested JSON (within the size limit), with no stack overflow; a body that makes
    // teloxide's parser panic (found by the fuzz target), not a dropped connection; ids out of
    // Telegram's ranges; a known kind whose content no Telegram update can have.
    let nested = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let nested_object =
        format!(r#"{{"update_id": 5, "message": {}1{}}}"#, r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let reaction = r#"{"update_id":1,"message_reaction":{"chat":{"id":1,"type":"private","first_name":"A"},"message_id":1,"date":1700000000,"old_reaction":[],"new_reaction":[]}}"#;
    let mut bodies = vec![nested, nested_object, reaction.to_owned()];
    for update_id in [json!(-1), json!(1u64 << 40), json!("7"), json!(1.5)] {
        let mut update = text_update(2, 42, "a post with a strange update id");
        update["update_id"] = update_id;
        bodies.push(update.to_string());
    }
    let mut huge_chat = text_update(3, 42, "a post from a chat id past i64");
    huge_chat["message"]["chat"]["id"] = json!(u64::MAX);
    bodies.push(huge_chat.to_string());
    for body in &bodies {
        let response = deliver(&worker, &MAIN_BOT, Some(MAIN_BOT.secret), body.clone()).await;
        assert_eq!(response.status(), 200, "{}…", &body[..body.len().min(80)]);
    }
    assert_eq!(db.count("SELECT count(*) FROM dead_letters").await, bodies.len() as i64, "each kept");
    assert_eq!(worker.metrics.updates_ignored.with_label_values(&["main", "unknown"]).get(), 0);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0, "nothing hostile was written");

    // Unknown fields inside a known kind are ignored; the update is handled as usual.
    let mut extended = text_update(4, 43, "a post with fields Telegram may add one day");
    extended["message"]["a_future_field"] = json!({"nested": [1, 2, 3]});
    extended["a_future_top_level_field"] = json!(true);
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &extended).await.status(), 200);

    // SQL, HTML and control characters are text: stored and served exactly as sent.
    let texts = [
        "'); DROP TABLE posts; -- and a little more text",
        "<script>alert('x')</script><img src=x onerror=alert(1)>",
        "bell \u{7} escape \u{1b}[31m tab \t and a right-to-left \u{202e} mark",
    ];
    for (n, text) in texts.iter().enumerate() {
        let update = text_update(10 + n as i64, 44 + n as i64, text);
        assert_eq!(deliver_update(&worker, &MAIN_BOT, &update).await.status(), 200, "{text:?}");
    }
    let stored: Vec<String> = db
        .owner()
        .await
        .query("SELECT text FROM posts WHERE update_id >= 10 ORDER BY update_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, texts, "stored verbatim, and the posts table is still there");

    // And the worker still serves an honest update.
    assert_eq!(deliver_update(&worker, &MAIN_BOT, &honest).await.status(), 200);
}

#[tokio::test]
async fn the_api_refuses_hostile_requests_with_json_errors_that_leak_nothing() {
    let stack = Stack::start(false).await;
    let api = &stack.api;
    let long_cursor = format!("/api/feed?cursor={}", "A".repeat(20_000));
    let long_query = format!("/api/feed?limit=20&{}", "x=1&".repeat(5_000));
    for (path, status) in [
        ("/api/feed?page=-1", 400),
        ("/api/feed?page=99999999999999999999999", 400),
        ("/api/feed?limit=20&limit=21", 400),
        (long_cursor.as_str(), 400),
        ("/api/posts/-1", 404),
        ("/api/posts/99999999999999999999999", 400),
        ("/api/media/..%2F..%2Fetc%2Fpasswd", 400),
        ("/api/feed/%00", 404),
        ("/api/posts/1%27%20OR%20%271%27=%271", 400),
    ] {
        let response = reqwest::get(api.url(path)).await.unwrap();
        assert_eq!(response.status(), status, "{}", &path[..path.len().min(80)]);
        let body: Value = response.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_else(|| panic!("no JSON error for {path}: {body}"));
        for leak in ["postgres", "redis", "panicked", "src/", "SELECT", MAIN_BOT.token] {
            assert!(!error.contains(leak), "{path}: the error leaks {leak:?}: {error}");
        }
    }
    // A very long query string of unknown parameters is ignored, not an error.
    assert_eq!(reqwest::get(api.url(&long_query)).await.unwrap().status(), 200);
    // The node still serves the feed.
    assert_eq!(reqwest::get(api.url("/api/feed")).await.unwrap().status(), 200);
}
