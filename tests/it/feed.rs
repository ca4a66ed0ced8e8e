//! The feed API: keyset pages with opaque cursors and a Link header, clear 4xx for bad input.

use serde_json::Value;

use crate::helpers::{TestDb, spawn_api, unique};

/// Inserts `n` published posts directly, oldest first, each a millisecond apart.
async fn seed_posts(db: &TestDb, n: i64) {
    db.owner()
        .await
        .batch_execute(&format!(
            "INSERT INTO users (bot_id, user_id, first_name, username) VALUES (1, 2, 'Ada', 'ada');
             INSERT INTO users (bot_id, user_id, first_name, is_banned) VALUES (1, 3, 'Mallory', true);
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, text, published_at)
             SELECT 1, 2, 2, g, 'post number ' || g, now() - interval '1 hour' + g * interval '1 millisecond'
             FROM generate_series(1, {n}) g;
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, text, published_at)
             VALUES (1, 3, 3, 100000, 'banned author post', now());
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, text, status)
             VALUES (1, 2, 2, 100001, 'still pending post', 'pending');"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn feed_walks_every_post_newest_first_by_cursor() {
    let db = TestDb::fresh().await;
    seed_posts(&db, 45).await;
    let api = spawn_api(&db, &unique("r"), false).await;
    let client = reqwest::Client::new();
    let mut seen = Vec::new();
    let mut url = api.url("/api/feed?limit=20");
    let mut pages = 0;
    loop {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let link = response.headers().get("link").map(|v| v.to_str().unwrap().to_owned());
        let page: Value = response.json().await.unwrap();
        pages += 1;
        for post in page["posts"].as_array().unwrap() {
            seen.push(post["text"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                let link = link.expect("a page with a next cursor must have a Link header");
                assert!(link.contains(cursor) && link.ends_with("rel=\"next\""), "{link}");
                url = api.url(&format!("/api/feed?limit=20&cursor={cursor}"));
            }
            None => {
                assert!(link.is_none(), "the last page must not link onwards");
                break;
            }
        }
    }
    let expected: Vec<String> = (1..=45).rev().map(|n| format!("post number {n}")).collect();
    assert_eq!(seen, expected, "every public post once, newest first; no banned or pending ones");
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn feed_rejects_bad_limits_and_cursors_with_json_errors() {
    let db = TestDb::fresh().await;
    let api = spawn_api(&db, &unique("r"), false).await;
    for query in ["limit=0", "limit=101", "limit=-1", "limit=ten", "cursor=garbage", "cursor=djEuMS4y%21"] {
        let response = reqwest::get(api.url(&format!("/api/feed?{query}"))).await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{query}: {body}");
    }
    for (path, status) in
        [("/api/posts/999", 404), ("/api/posts/abc", 400), ("/api/nothing", 404), ("/etc/passwd", 404)]
    {
        let response = reqwest::get(api.url(path)).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}
