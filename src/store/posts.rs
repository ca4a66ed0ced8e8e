//! Posts as the worker writes them, and the updates that kept failing (dead letters).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use super::sql::{StoreError, WAL_POSITION, query, query_committed};
use crate::types::{Author, BotId, ChatId, MessageId, PostId, PostView, UpdateId, UserId};

pub struct NewPost {
    pub bot_id: BotId,
    pub update_id: UpdateId,
    /// What made the post (`bot::identity`): a redelivery, whatever its update id, finds it.
    pub origin: String,
    pub chat_id: ChatId,
    pub message_id: Option<MessageId>,
    pub author_id: UserId,
    pub text: String,
    /// Telegram's `file_id` and `file_unique_id` of the photo.
    pub photo: Option<(String, String)>,
    /// Published at once, or pending a moderator's decision.
    pub published: bool,
}

/// A stored post, as the worker needs it after a write.
#[derive(Debug, Clone)]
pub struct StoredPost {
    pub id: PostId,
    pub chat_id: ChatId,
    pub text: String,
    pub has_media: bool,
    pub status: String,
    pub published_at: Option<DateTime<Utc>>,
}

impl StoredPost {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            chat_id: row.get("chat_id"),
            text: row.get("text"),
            has_media: row.get("has_media"),
            status: row.get("status"),
            published_at: row.get("published_at"),
        }
    }

    /// The post as the feed shows it, if it is published.
    pub fn view(&self, bot_id: BotId, author: Author) -> Option<PostView> {
        Some(PostView {
            id: self.id,
            bot_id,
            text: self.text.clone(),
            has_media: self.has_media,
            published_at: self.published_at.filter(|_| self.status == "published")?,
            author,
        })
    }
}

const POST_RETURNING: &str =
    "id, chat_id, text, media_file_id IS NOT NULL AS has_media, status, published_at";

/// Inserts the posts of several updates in one statement, hence one transaction; returns them
/// in the same order, with the WAL position after their commit. A redelivered update gets the
/// post its first delivery created (posts are unique by origin).
///
/// A post is published only if its author is not banned, read under a share lock of the
/// author's row: a ban (an update of that row) commits either before, and the post is rejected
/// whatever the user cache said, or after the post, which then leaves the feed with the ban.
pub async fn insert_posts(db: &Pool, posts: &[NewPost]) -> Result<(Vec<StoredPost>, i64), StoreError> {
    let column = |f: fn(&NewPost) -> i64| posts.iter().map(f).collect::<Vec<_>>();
    let (bot_ids, update_ids) = (column(|p| p.bot_id.0), column(|p| p.update_id.0));
    let (chat_ids, author_ids) = (column(|p| p.chat_id.0), column(|p| p.author_id.0));
    let origins: Vec<_> = posts.iter().map(|p| p.origin.as_str()).collect();
    let message_ids: Vec<_> = posts.iter().map(|p| p.message_id).collect();
    let texts: Vec<_> = posts.iter().map(|p| p.text.as_str()).collect();
    let file_ids: Vec<_> = posts.iter().map(|p| p.photo.as_ref().map(|(id, _)| id.as_str())).collect();
    let unique_ids: Vec<_> = posts.iter().map(|p| p.photo.as_ref().map(|(_, id)| id.as_str())).collect();
    let statuses: Vec<_> = posts.iter().map(|p| if p.published { "published" } else { "pending" }).collect();
    let (mut found, position) = query_committed(
        db,
        &format!(
            "WITH n AS (
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[],
                                      $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
                          AS n(b, u, c, m, a, t, f, q, s, o)
             ), authors AS (
                 SELECT bot_id, user_id, is_banned FROM users
                 WHERE (bot_id, user_id) IN (SELECT b, a FROM n)
                 ORDER BY bot_id, user_id
                 FOR SHARE
             ), vetted AS (
                 SELECT n.*, CASE WHEN coalesce(authors.is_banned, false) THEN 'rejected' ELSE s END AS status
                 FROM n LEFT JOIN authors ON authors.bot_id = n.b AND authors.user_id = n.a
             )
             INSERT INTO posts (bot_id, update_id, origin, chat_id, message_id, author_id, text,
                                media_file_id, media_unique_id, status, published_at)
             SELECT b, u, o, c, m, a, t, f, q, status, CASE WHEN status = 'published' THEN now() END
             FROM vetted
             ON CONFLICT ON CONSTRAINT posts_origin_once DO NOTHING
             RETURNING bot_id, origin, {POST_RETURNING}"
        ),
        &[
            &bot_ids,
            &update_ids,
            &chat_ids,
            &message_ids,
            &author_ids,
            &texts,
            &file_ids,
            &unique_ids,
            &statuses,
            &origins,
        ],
    )
    .await?;
    if found.len() < posts.len() {
        // Some were there already (redeliveries).
        found.extend(
            query(
                db,
                &format!(
                    "SELECT bot_id, origin, {POST_RETURNING} FROM posts
                     WHERE (bot_id, origin) IN (SELECT * FROM unnest($1::int8[], $2::text[]))"
                ),
                &[&bot_ids, &origins],
            )
            .await?,
        );
    }
    let by_origin: HashMap<(BotId, String), StoredPost> =
        found.iter().map(|row| ((row.get("bot_id"), row.get("origin")), StoredPost::from_row(row))).collect();
    let stored = posts
        .iter()
        .map(|p| {
            by_origin
                .get(&(p.bot_id, p.origin.clone()))
                .cloned()
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("post of {} vanished", p.origin)))
        })
        .collect::<Result<_, _>>()?;
    Ok((stored, position))
}

/// A moderator's decision on a pending post, by their click (`origin`, the press's identity).
/// Only the first decision counts: returns the post as decided (now or before), its author, and
/// whether this click decided it (now, or in an earlier delivery of it); `None` if the post is
/// gone or still pending. A banned author's post is rejected whatever the moderator chose (the
/// author's row is share-locked, as in [`insert_posts`]).
pub async fn decide(
    db: &Pool,
    bot_id: BotId,
    post_id: PostId,
    approve: bool,
    origin: &str,
) -> Result<Option<(StoredPost, Author, bool)>, StoreError> {
    let rows = query(
        db,
        "WITH author AS (
             SELECT u.bot_id, u.user_id, u.first_name, u.username, u.is_banned
             FROM users u JOIN posts p ON u.bot_id = p.bot_id AND u.user_id = p.author_id
             WHERE p.bot_id = $1 AND p.id = $2
             FOR SHARE OF u
         ), decided AS (
             UPDATE posts p
             SET status = CASE WHEN $3 AND NOT u.is_banned THEN 'published' ELSE 'rejected' END,
                 published_at = CASE WHEN $3 AND NOT u.is_banned THEN now() END,
                 decided_by = $4
             FROM author u
             WHERE p.bot_id = $1 AND p.id = $2 AND p.status = 'pending'
               AND u.bot_id = p.bot_id AND u.user_id = p.author_id
             RETURNING p.id, p.chat_id, p.text, p.media_file_id IS NOT NULL AS has_media,
                       p.status, p.published_at, u.first_name, u.username
         )
         SELECT *, true AS now FROM decided
         UNION ALL
         SELECT p.id, p.chat_id, p.text, p.media_file_id IS NOT NULL, p.status, p.published_at,
                u.first_name, u.username, p.decided_by IS NOT DISTINCT FROM $4
         FROM posts p JOIN users u ON u.bot_id = p.bot_id AND u.user_id = p.author_id
         WHERE p.bot_id = $1 AND p.id = $2 AND p.status IN ('published', 'rejected')
           AND NOT EXISTS (SELECT 1 FROM decided)",
        &[&bot_id, &post_id, &approve, &origin],
    )
    .await?;
    Ok(rows.first().map(|row| {
        let author = Author { first_name: row.get("first_name"), username: row.get("username") };
        (StoredPost::from_row(row), author, row.get("now"))
    }))
}

/// The author's latest posts, newest first.
pub async fn posts_of(
    db: &Pool,
    bot_id: BotId,
    author_id: UserId,
    limit: i64,
) -> Result<Vec<StoredPost>, StoreError> {
    let rows = query(
        db,
        &format!(
            "SELECT {POST_RETURNING} FROM posts
             WHERE bot_id = $1 AND author_id = $2 AND status <> 'rejected'
             ORDER BY id DESC LIMIT $3"
        ),
        &[&bot_id, &author_id, &limit],
    )
    .await?;
    Ok(rows.iter().map(StoredPost::from_row).collect())
}

/// Deletes one of the author's own posts; returns it if it existed.
pub async fn delete_post(
    db: &Pool,
    bot_id: BotId,
    author_id: UserId,
    post_id: PostId,
) -> Result<Option<StoredPost>, StoreError> {
    let rows = query(
        db,
        &format!(
            "DELETE FROM posts WHERE bot_id = $1 AND author_id = $2 AND id = $3 RETURNING {POST_RETURNING}"
        ),
        &[&bot_id, &author_id, &post_id],
    )
    .await?;
    Ok(rows.first().map(StoredPost::from_row))
}

/// An edit of the message that created a post still pending updates the post's text.
pub async fn edit_pending(
    db: &Pool,
    bot_id: BotId,
    chat_id: ChatId,
    message_id: MessageId,
    text: &str,
) -> Result<bool, StoreError> {
    let rows = query(
        db,
        "UPDATE posts SET text = $4
         WHERE bot_id = $1 AND chat_id = $2 AND message_id = $3 AND status = 'pending' RETURNING 1",
        &[&bot_id, &chat_id, &message_id, &text],
    )
    .await?;
    Ok(!rows.is_empty())
}

/// The primary's WAL position now, in bytes: after a commit, every replica that has replayed
/// this far has seen it.
pub async fn wal_position(db: &Pool) -> Result<i64, StoreError> {
    let rows = query(db, WAL_POSITION, &[]).await?;
    rows.first().map(|row| row.get(0)).ok_or_else(|| StoreError::Other(anyhow::anyhow!("no WAL position")))
}

/// Keeps an update that kept failing, whole, with the last error.
pub async fn dead_letter(
    db: &Pool,
    bot_id: BotId,
    update_id: UpdateId,
    payload: &str,
    error: &str,
    attempts: i32,
) -> Result<(), StoreError> {
    query(
        db,
        "INSERT INTO dead_letters (bot_id, update_id, payload, error, attempts) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (bot_id, update_id, md5(payload))
         DO UPDATE SET error = EXCLUDED.error, attempts = EXCLUDED.attempts",
        &[&bot_id, &update_id, &payload, &error, &attempts],
    )
    .await?;
    Ok(())
}
