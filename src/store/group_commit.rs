//! Group commit of new posts: the posts of concurrent updates reach Postgres in one multi-row
//! INSERT — one statement, one transaction, one WAL flush — rather than one each: less work for
//! the primary and for every replica per post (see `loadtest/README.md`).
//!
//! One writer takes the queued posts in batches (`crate::batch`); under load they grow by
//! themselves while the previous batch commits (`botfleet_posts_per_commit` shows how large). A
//! second writer made no batch larger and cost Postgres more per post. The writer also lingers:
//! a batch waits for a few posts more at the pace of the batch before it, up to [`LINGER`]. A
//! commit's price is mostly fixed (the WAL flush, and waking the walsender and every replica's
//! receiver and startup process), so a few milliseconds buy fewer commits: at 500 updates/s,
//! half as many, and about a quarter less CPU per update for the whole cluster; under
//! saturation the wait is about a millisecond (`loadtest/README.md`). Every caller gets its own
//! post back once it is committed, and a redelivered update the post its first delivery
//! created. A batch that fails on a statement error is retried post by post, so that one bad
//! post cannot fail the others.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;

use super::posts::{self, NewPost, StoredPost};
use super::sql::StoreError;
use crate::batch::Batches;
use crate::metrics::Metrics;

/// Most posts in one INSERT.
const MAX_BATCH: usize = 64;
/// The longest a batch waits for more posts (under light load, every batch).
const LINGER: Duration = Duration::from_millis(4);

/// A post as committed, with the primary's WAL position after its commit: a replica that has
/// replayed this far has it (`store::replicas`).
pub type Committed = (StoredPost, i64);

#[derive(Clone)]
pub struct PostWriter(Batches<NewPost, Result<Committed, StoreError>>);

impl PostWriter {
    /// Starts the writer; it ends once every clone of the writer is dropped.
    pub fn start(db: Pool, metrics: Arc<Metrics>) -> Self {
        Self(Batches::start(MAX_BATCH, LINGER, move |posts| {
            let (db, metrics) = (db.clone(), metrics.clone());
            async move {
                metrics.posts_per_commit.observe(posts.len() as f64);
                let started = std::time::Instant::now();
                let written = write(&db, posts).await;
                metrics
                    .db_query_seconds
                    .with_label_values(&["insert_posts"])
                    .observe(started.elapsed().as_secs_f64());
                written
            }
        }))
    }

    /// Inserts the post of an update and returns it, once committed.
    pub async fn insert(&self, post: NewPost) -> Result<Committed, StoreError> {
        let stopped = || StoreError::Other(anyhow::anyhow!("the post writer stopped"));
        self.0.submit(post).await.ok_or_else(stopped)?
    }
}

async fn write(db: &Pool, posts: Vec<NewPost>) -> Vec<Result<Committed, StoreError>> {
    match posts::insert_posts(db, &posts).await {
        Ok((stored, position)) => stored.into_iter().map(|post| Ok((post, position))).collect(),
        Err(StoreError::Other(e)) if posts.len() > 1 => {
            tracing::warn!(error = %format!("{e:#}"), posts = posts.len(), "a batch of posts failed; writing them one by one");
            let mut written = Vec::with_capacity(posts.len());
            for post in &posts {
                // One post in, one post back (`insert_posts` answers each post it is given).
                let one = posts::insert_posts(db, std::slice::from_ref(post)).await;
                written.push(one.map(|(mut stored, position)| (stored.remove(0), position)));
            }
            written
        }
        Err(e) => posts.iter().map(|_| Err(e.for_another())).collect(),
    }
}
