//! Requests of concurrent updates in one process, handled together: the posts they insert
//! (`store::group_commit`) and the posts they publish (`feed::publish`). Each costs a round trip and a
//! fixed price at the other end (a commit, a Lua call), so under load one for many is much less
//! per update; under light load a batch is one request and waits for nothing.
//!
//! One task takes whatever is queued (up to a maximum) as soon as its previous batch is handled.
//! Before taking it, the task lets the scheduler run [`YIELDS`] times, so that the updates already
//! runnable in this process reach their request too; an idle process loses a few microseconds by
//! it. A batcher may also *linger* while it is busy: after a batch of more than one, wait up to a
//! bound after the next batch's first request for more, when each batch costs so much that the
//! wait pays (the group commit: see `store::group_commit`).

use std::future::Future;
use std::time::Duration;

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
    /// each, in order. After a batch of more than one, the next waits up to `linger` after its
    /// first request for more (until it has `max`). The task ends once every clone of the
    /// returned handle is dropped.
    pub fn start<F, Fut>(max: usize, linger: Duration, mut handle: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (queue, mut queued) = mpsc::unbounded_channel::<(T, oneshot::Sender<R>)>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            // Only after a batch of more than one: under light load, a request waits for nothing.
            let mut lingering = false;
            while queued.recv_many(&mut batch, max).await > 0 {
                for _ in 0..YIELDS {
                    tokio::task::yield_now().await;
                }
                if lingering {
                    let until = tokio::time::Instant::now() + linger;
                    while batch.len() < max {
                        let room = max - batch.len();
                        let more = queued.recv_many(&mut batch, room);
                        if !matches!(tokio::time::timeout_at(until, more).await, Ok(1..)) {
                            break;
                        }
                    }
                } else {
                    while batch.len() < max {
                        match queued.try_recv() {
                            Ok(request) => batch.push(request),
                            Err(_) => break,
                        }
                    }
                }
                let (requests, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut batch).into_iter().unzip();
                lingering = !linger.is_zero() && requests.len() > 1;
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
        let doubler = Batches::start(4, Duration::ZERO, move |numbers: Vec<u32>| {
            seen.lock().unwrap().push(numbers.len());
            async move { numbers.into_iter().map(|n| n * 2).collect::<Vec<_>>() }
        });
        let answers = futures_util::future::join_all((0..10).map(|n| doubler.submit(n))).await;
        assert_eq!(answers, (0..10).map(|n| Some(n * 2)).collect::<Vec<_>>());
        assert_eq!(*sizes.lock().unwrap(), [4, 4, 2], "at most 4 at a time, no request alone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_batcher_lingers_for_more_up_to_its_bound_and_an_idle_one_does_not() {
        let start = tokio::time::Instant::now();
        let batches_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = batches_seen.clone();
        let batches = Batches::start(4, Duration::from_millis(50), move |numbers: Vec<u32>| {
            seen.lock().unwrap().push((numbers.clone(), start.elapsed().as_millis()));
            async move { numbers }
        });
        // Request `n` arrives at `ms` on the test's paused clock, which jumps straight to the
        // next timer whenever every task waits: the arrival schedule, exact, not a wait for
        // anything to be ready.
        let at = |ms, n| {
            let batches = batches.clone();
            async move {
                tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                batches.submit(n).await
            }
        };
        let arrivals = [(0, 1), (0, 2), (30, 3), (60, 4), (300, 5), (600, 6), (800, 7), (800, 8)];
        let full = [(900, 9), (901, 10), (902, 11), (903, 12)];
        let answers =
            futures_util::future::join_all(arrivals.into_iter().chain(full).map(|(ms, n)| at(ms, n))).await;
        assert_eq!(answers, (1..=12).map(Some).collect::<Vec<_>>());
        let expected = [
            (vec![1, 2], 0),            // the first batch waits for nothing
            (vec![3, 4], 80),           // after a batch of two, 3 waits 50 ms, and 4 joins it
            (vec![5], 350),             // nobody joins 5 within its 50 ms
            (vec![6], 600),             // after a batch of one, 6 goes at once
            (vec![7, 8], 800),          // so do 7 and 8, which came together
            (vec![9, 10, 11, 12], 903), // a full batch goes without waiting out its 50 ms
        ];
        assert_eq!(*batches_seen.lock().unwrap(), expected);
    }
}
