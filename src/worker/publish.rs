//! Published posts go out to the API nodes in batches (`batch.rs`): the posts that committed
//! together are published together, in one call of `publish_post.lua`, rather than one call
//! each. Every caller has committed its post before it asks, and gets its answer once its post
//! is out, so a reply never announces a post the feed does not have yet.

use std::sync::Arc;
use std::time::Duration;

use super::batch::Batches;
use crate::feed::{self, PostView};
use crate::kv::{Conn, FeedKeys};

/// Most posts in one call.
const MAX_BATCH: usize = 64;

/// Whether a post went out now (its stream offset) or before (`None`); an error is Redis'.
type Published = Result<Option<String>, String>;

#[derive(Clone)]
pub struct Publisher(Batches<(Conn, PostView), Published>);

impl Publisher {
    /// Starts the publisher; it ends once every clone of it is dropped.
    pub fn start(keys: Arc<FeedKeys>, stream_len: u64) -> Self {
        Self(Batches::start(MAX_BATCH, Duration::ZERO, move |requests: Vec<(Conn, PostView)>| {
            let keys = keys.clone();
            async move {
                // Every request carries a clone of the process's one Redis connection.
                let Some(mut conn) = requests.first().map(|(conn, _)| conn.clone()) else {
                    return Vec::new();
                };
                let posts: Vec<PostView> = requests.into_iter().map(|(_, post)| post).collect();
                match feed::publish(&mut conn, &keys, &posts, stream_len).await {
                    Ok(offsets) => offsets.into_iter().map(Ok).collect(),
                    Err(e) => posts.iter().map(|_| Err(format!("{e:#}"))).collect(),
                }
            }
        }))
    }

    /// Publishes a committed post; `None` if it went out before.
    pub async fn publish(&self, conn: Conn, post: PostView) -> anyhow::Result<Option<String>> {
        let answer = self.0.submit((conn, post)).await;
        answer.ok_or_else(|| anyhow::anyhow!("the publisher stopped"))?.map_err(anyhow::Error::msg)
    }
}
