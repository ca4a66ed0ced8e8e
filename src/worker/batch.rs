//! Requests of concurrent updates in one process, handled together: the posts they insert
//! (`group_commit.rs`) and the posts they publish (`publish.rs`). Each costs a round trip and a
//! fixed price at the other end (a commit, a Lua call), so under load one for many is much less
//! per update; under light load a batch is one request and waits for nothing.
//!
//! One task takes whatever is queued (up to a maximum) as soon as its previous batch is handled.
//! Before taking it, the task lets the scheduler run [`YIELDS`] times, so that the updates already
//! runnable in this process reach their request too; an idle process loses a few microseconds by
//! it (no timer, no waiting for requests that may never come).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// Turns of the scheduler before a batch is taken. Under W1, 2 made group commits of 6 to 7
/// posts; 12 and 24 made them larger and the worker cheaper per update (`loadtest/README.md`).
const YIELDS: usize = 24;

pub struct Batches<T, R> {
    queue: mpsc::UnboundedSender<(T, oneshot::Sender<R>)>,
}

impl<T, R> Clone for Batches<T, R> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone() }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batches<T, R> {
    /// Starts the task that hands batches of at most `max` requests to `handle`, which answers
    /// each, in order. The task ends once every clone of the returned handle is dropped.
    pub fn start<F, Fut>(max: usize, mut handle: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (queue, mut queued) = mpsc::unbounded_channel::<(T, oneshot::Sender<R>)>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while queued.recv_many(&mut batch, max).await > 0 {
                for _ in 0..YIELDS {
                    tokio::task::yield_now().await;
                }
                while batch.len() < max {
                    match queued.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                let (requests, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut batch).into_iter().unzip();
                for (reply, answer) in replies.into_iter().zip(handle(requests).await) {
                    let _ = reply.send(answer);
                }
            }
        });
        Self { queue }
    }

    /// The answer to `request`, once its batch is handled; `None` if the task has stopped.
    pub async fn submit(&self, request: T) -> Option<R> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((request, reply)).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn concurrent_requests_share_a_batch_and_each_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let doubler = Batches::start(4, move |numbers: Vec<u32>| {
            seen.lock().unwrap().push(numbers.len());
            async move { numbers.into_iter().map(|n| n * 2).collect::<Vec<_>>() }
        });
        let answers = futures_util::future::join_all((0..10).map(|n| doubler.submit(n))).await;
        assert_eq!(answers, (0..10).map(|n| Some(n * 2)).collect::<Vec<_>>());
        assert_eq!(*sizes.lock().unwrap(), [4, 4, 2], "at most 4 at a time, no request alone");
    }
}
