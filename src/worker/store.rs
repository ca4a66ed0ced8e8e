//! The worker's writes to the primary. Every write is idempotent per update: replaying an
//! update never creates a second row.

use deadpool_postgres::Pool;
use teloxide_core::types::User;

use crate::domain::PostText;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (pool timeout, connection refused or closed).
    #[error("postgres unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.into())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // No SQLSTATE means the failure was the connection, not the statement.
        if e.is_closed() || e.code().is_none() {
            StoreError::Unavailable(e.into())
        } else {
            StoreError::Other(e.into())
        }
    }
}

pub struct NewPost<'a> {
    pub bot_id: i64,
    pub update_id: i64,
    pub chat_id: i64,
    pub author: &'a User,
    pub text: &'a PostText,
}

/// Upserts the author (only when the profile changed) and inserts the post as published, in
/// one statement. Returns the post's id, also when the update was already handled before.
pub async fn insert_published_post(db: &Pool, post: &NewPost<'_>) -> Result<i64, StoreError> {
    let client = db.get().await?;
    let insert = client
        .prepare_cached(
            "WITH author AS (
                 INSERT INTO users (bot_id, user_id, first_name, last_name, username, language_code)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (bot_id, user_id) DO UPDATE
                 SET first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
                     username = EXCLUDED.username, language_code = EXCLUDED.language_code,
                     updated_at = now()
                 WHERE (users.first_name, users.last_name, users.username, users.language_code)
                       IS DISTINCT FROM
                       (EXCLUDED.first_name, EXCLUDED.last_name, EXCLUDED.username, EXCLUDED.language_code)
             )
             INSERT INTO posts (bot_id, author_id, chat_id, update_id, text, status, published_at)
             VALUES ($1, $2, $7, $8, $9, 'published', now())
             ON CONFLICT ON CONSTRAINT posts_update_once DO NOTHING
             RETURNING id",
        )
        .await?;
    let author = post.author;
    let author_id = i64::try_from(author.id.0).map_err(|e| StoreError::Other(e.into()))?;
    let inserted = client
        .query_opt(
            &insert,
            &[
                &post.bot_id,
                &author_id,
                &author.first_name,
                &author.last_name,
                &author.username,
                &author.language_code,
                &post.chat_id,
                &post.update_id,
                &post.text.as_str(),
            ],
        )
        .await?;
    if let Some(row) = inserted {
        return Ok(row.get(0));
    }
    // The update was handled before (a redelivery): the post exists; answer as the first time.
    let existing = client
        .query_one(
            "SELECT id FROM posts WHERE bot_id = $1 AND update_id = $2",
            &[&post.bot_id, &post.update_id],
        )
        .await?;
    Ok(existing.get(0))
}
