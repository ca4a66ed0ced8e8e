//! The schema: migrations (idempotent, safe concurrently) and least-privilege roles
//! (invariant 7: the API's role cannot write).

use botfleet::store::migrations::{self, MIGRATIONS};

use crate::helpers::{API_ROLE, TestDb, WORKER_ROLE, connect};

#[tokio::test]
async fn migrations_are_idempotent_and_safe_when_run_concurrently() {
    let db = TestDb::empty().await;
    let settings = db.migrate_settings();
    let (a, b, c) = tokio::join!(
        migrations::apply(&settings),
        migrations::apply(&settings),
        migrations::apply(&settings)
    );
    let mut applied: Vec<i32> =
        [a, b, c].into_iter().flat_map(|r| r.expect("a concurrent migrate failed")).collect();
    applied.sort();
    let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(applied, all, "each migration must be applied exactly once across concurrent runs");

    let again = migrations::apply(&settings).await.expect("a second migrate failed");
    assert!(again.is_empty(), "a second run applied {again:?}");
    let recorded = db.count("SELECT count(*) FROM botfleet_migrations").await;
    assert_eq!(recorded, all.len() as i64);
    assert_eq!(db.count("SELECT count(*) FROM posts").await, 0);
}

/// SQLSTATE of the error a statement fails with, or a panic naming the statement that passed.
async fn refused(client: &tokio_postgres::Client, sql: &str) -> String {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("{sql:?} succeeded but must be refused"),
        Err(e) => e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| panic!("{sql:?}: {e}")),
    }
}

#[tokio::test]
async fn api_role_cannot_insert_update_or_delete() {
    let db = TestDb::fresh().await;
    db.owner()
        .await
        .batch_execute(
            "INSERT INTO users (bot_id, user_id, first_name) VALUES (1, 2, 'x');
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, published_at) VALUES (1, 2, 2, 1, 'u:1', 'hello world', now())",
        )
        .await
        .unwrap();
    let api = connect(&db.url(API_ROLE, false)).await;
    assert_eq!(
        api.query("SELECT id FROM posts", &[]).await.unwrap().len(),
        1,
        "the API role must read posts"
    );
    let writes = [
        "INSERT INTO users (bot_id, user_id, first_name) VALUES (1, 3, 'y')",
        "INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, published_at) VALUES (1, 2, 2, 2, 'u:2', 'sneaky post', now())",
        "UPDATE posts SET text = 'defaced!!!'",
        "DELETE FROM posts",
        "DELETE FROM users",
        "INSERT INTO dead_letters (bot_id, payload, error, attempts) VALUES (1, '{}', 'x', 1)",
        "CREATE TABLE mine (id int)",
    ];
    for sql in writes {
        // Read-only by default (25006) ...
        refused(&api, sql).await;
        // ... and without the privilege even when it asks for a read-write transaction (42501).
        let code = refused(&api, &format!("BEGIN READ WRITE; {sql}")).await;
        api.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(code, "42501", "{sql:?} must fail for lack of privilege, failed with {code}");
    }
    assert_eq!(db.count("SELECT count(*) FROM posts WHERE text = 'hello world'").await, 1);
}

#[tokio::test]
async fn worker_role_writes_users_and_posts_but_not_the_schema() {
    let db = TestDb::fresh().await;
    let worker = connect(&db.url(WORKER_ROLE, false)).await;
    worker
        .batch_execute(
            "INSERT INTO users (bot_id, user_id, first_name) VALUES (1, 2, 'x');
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, origin, text, published_at) VALUES (1, 2, 2, 1, 'u:1', 'hello world', now());
             UPDATE posts SET is_public = false;
             DELETE FROM posts;",
        )
        .await
        .expect("the worker role must write users and posts");
    assert_eq!(refused(&worker, "DROP TABLE posts").await, "42501");
    assert_eq!(refused(&worker, "DELETE FROM botfleet_migrations").await, "42501");
}
