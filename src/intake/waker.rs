//! Wakes this process's waiters when a chat's turn is released anywhere in the cluster (Redis
//! pub/sub); a missed message costs a waiter one poll interval, never its turn.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::keyed::Keyed;
use crate::kv::turns_channel;
use crate::shutdown::CancellationToken;

/// Wakes local waiters when a chat's turn is released anywhere in the cluster.
#[derive(Default)]
pub struct Waker {
    /// One notifier per chat lease key, shared by every local waiter of that chat.
    waiting: Keyed<Notify>,
}

impl Waker {
    /// The notifier that `lease_key`'s release wakes, shared by this process's waiters.
    pub(super) fn waiting(&self, lease_key: &str) -> Arc<Notify> {
        self.waiting.acquire(lease_key)
    }

    fn wake(&self, lease_key: &str) {
        if let Some(notify) = self.waiting.get(lease_key) {
            notify.notify_waiters();
        }
    }

    /// Subscribes to released turns until `shutdown`, reconnecting after errors. Missed
    /// messages only cost a waiter one poll interval.
    pub async fn run(
        self: Arc<Self>,
        client: crate::kv::Client,
        deployment: String,
        shutdown: CancellationToken,
    ) {
        let channel = turns_channel(&deployment);
        loop {
            let subscribed = async {
                let mut pubsub = client.pubsub().await?;
                pubsub.subscribe(&channel).await?;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    if let Ok(lease_key) = message.get_payload::<String>() {
                        self.wake(&lease_key);
                    }
                }
                Ok::<(), redis::RedisError>(())
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = subscribed => {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "chat-turn subscription lost; resubscribing");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}
