//! Group commit of new posts: the posts of concurrent updates reach Postgres in one multi-row
//! INSERT — one statement, one transaction, one WAL flush — rather than one each: less work for
//! the primary and for every replica per post (see `loadtest/README.md`).
//!
//! One writer takes whatever is queued (up to [`MAX_BATCH`] posts) as soon as its previous
//! batch has committed. Under light load a batch is one post and waits for nothing; under load,
//! batches grow by themselves while the previous one commits (6 to 7 posts per commit under
//! W1; `botfleet_posts_per_commit` shows it). A second writer made no batch larger and cost
//! Postgres more per post. Every caller gets its own post back once it is committed, and a
//! redelivered update the post its first delivery created. A batch that fails on a statement
//! error is retried post by post, so that one bad post cannot fail the others.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::store::{self, NewPost, StoreError, StoredPost};
use crate::metrics::Metrics;

/// Most posts in one INSERT.
const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<StoredPost, StoreError>>;

#[derive(Clone)]
pub struct PostWriter {
    queue: mpsc::UnboundedSender<(NewPost, Reply)>,
}

impl PostWriter {
    /// Starts the writer; it ends once every clone of the writer is dropped.
    pub fn start(db: Pool, metrics: Arc<Metrics>) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(collect(db, queued, metrics));
        Self { queue }
    }

    /// Inserts the post of an update and returns it, once committed.
    pub async fn insert(&self, post: NewPost) -> Result<StoredPost, StoreError> {
        let stopped = || StoreError::Other(anyhow::anyhow!("the post writer stopped"));
        let (reply, answer) = oneshot::channel();
        self.queue.send((post, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn collect(db: Pool, mut queued: mpsc::UnboundedReceiver<(NewPost, Reply)>, metrics: Arc<Metrics>) {
    let mut batch = Vec::new();
    while queued.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Let the updates already runnable in this process reach their insert too; an idle
        // process loses nothing by it (no timer, no waiting for posts that may never come).
        for _ in 0..2 {
            tokio::task::yield_now().await;
        }
        while batch.len() < MAX_BATCH {
            match queued.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        metrics.posts_per_commit.observe(batch.len() as f64);
        let started = std::time::Instant::now();
        write(&db, std::mem::take(&mut batch)).await;
        metrics
            .db_query_seconds
            .with_label_values(&["insert_posts"])
            .observe(started.elapsed().as_secs_f64());
    }
}

async fn write(db: &Pool, batch: Vec<(NewPost, Reply)>) {
    let (posts, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    match store::insert_posts(db, &posts).await {
        Ok(stored) => {
            for (reply, post) in replies.into_iter().zip(stored) {
                let _ = reply.send(Ok(post));
            }
        }
        Err(StoreError::Other(e)) if posts.len() > 1 => {
            tracing::warn!(error = %format!("{e:#}"), posts = posts.len(), "a batch of posts failed; writing them one by one");
            for (post, reply) in posts.iter().zip(replies) {
                let one = store::insert_posts(db, std::slice::from_ref(post)).await;
                let _ = reply.send(one.map(|mut stored| stored.remove(0)));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.for_another()));
            }
        }
    }
}
