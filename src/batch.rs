//! Requests of concurrent updates in one process, handled together: the posts they insert
//! (`store::group_commit`) and the posts they publish (`feed::publish`). Each costs a round trip and a
//! fixed price at the other end (a commit, a Lua call), so under load one for many is much less
//! per update.
//!
//! One task takes whatever is queued (up to a maximum) as soon as its previous batch is handled.
//! Before taking it, the task lets the scheduler run [`YIELDS`] times, so that the updates already
//! runnable in this process reach their request too; an idle process loses a few microseconds by
//! it. A batcher may also *linger*, when each batch costs so much that waiting for more pays (the
//! group commit: see `store::group_commit`): it waits for about [`MORE`] requests more at the
//! pace of the last batch, up to a bound. Under light load that is the whole bound (a request
//! alone then shares its batch with the next one); under heavy load, a short wait, since batches
//! are large anyway and a longer one only adds to every request's latency (`loadtest/README.md`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// Turns of the scheduler before a batch is taken. Under W1, 2 made group commits of 6 to 7
/// posts; 12 and 24 made them larger and the worker cheaper per update (`loadtest/README.md`).
const YIELDS: usize = 24;

/// How many more requests a lingering batch waits for, at the last batch's pace: under W1's
/// closed loop about 1 ms, the fixed wait that let the most updates through of 0, 1, 2 and 4 ms
/// (`loadtest/README.md`).
const MORE: u32 = 3;

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
    /// each, in order. A batch waits for about [`MORE`] requests more at the last batch's pace,
    /// at most `linger` (until it has `max`). The task ends once every clone of the returned
    /// handle is dropped.
    pub fn start<F, Fut>(max: usize, linger: Duration, mut handle: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (queue, mut queued) = mpsc::unbounded_channel::<(T, oneshot::Sender<R>)>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            // The time between the last batch's requests (at most `linger`), from the end of the
            // batch before it.
            let (mut gap, mut last) = (linger, tokio::time::Instant::now());
            while queued.recv_many(&mut batch, max).await > 0 {
                for _ in 0..YIELDS {
                    tokio::task::yield_now().await;
                }
                // About MORE requests more at the last batch's pace, at most `linger`.
                let until = tokio::time::Instant::now() + linger.min(gap * MORE);
                loop {
                    // What is queued already is taken without a timer: the timer wheel would
                    // round it up to the next millisecond. A timer only for a wait still to come.
                    while batch.len() < max
                        && let Ok(request) = queued.try_recv()
                    {
                        batch.push(request);
                    }
                    let room = max - batch.len();
                    if room == 0 || tokio::time::Instant::now() >= until {
                        break;
                    }
                    let more = queued.recv_many(&mut batch, room);
                    if !matches!(tokio::time::timeout_at(until, more).await, Ok(1..)) {
                        break;
                    }
                }
                let now = tokio::time::Instant::now();
                gap = ((now - last) / batch.len() as u32).min(linger);
                last = now;
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
        let doubler = Batches::start(4, Duration::ZERO, move |numbers: Vec<u32>| {
            seen.lock().unwrap().push(numbers.len());
            async move { numbers.into_iter().map(|n| n * 2).collect::<Vec<_>>() }
        });
        let answers = futures_util::future::join_all((0..10).map(|n| doubler.submit(n))).await;
        assert_eq!(answers, (0..10).map(|n| Some(n * 2)).collect::<Vec<_>>());
        assert_eq!(*sizes.lock().unwrap(), [4, 4, 2], "at most 4 at a time, no request alone");
    }

    /// Requests `n` arriving at `ms` on the test's paused clock, which jumps straight to the
    /// next timer whenever every task waits: the arrival schedule, exact, not a wait for anything
    /// to be ready. Returns each batch with the moment it was handled.
    async fn batches_of(max: usize, linger: Duration, arrivals: Vec<(u64, u32)>) -> Vec<(Vec<u32>, u64)> {
        let start = tokio::time::Instant::now();
        let batches_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = batches_seen.clone();
        let batches = Batches::start(max, linger, move |numbers: Vec<u32>| {
            seen.lock().unwrap().push((numbers.clone(), start.elapsed().as_millis() as u64));
            async move { numbers }
        });
        let at = |(ms, n)| {
            let batches = batches.clone();
            async move {
                tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
                batches.submit(n).await
            }
        };
        let expected: Vec<_> = arrivals.iter().map(|&(_, n)| Some(n)).collect();
        assert_eq!(futures_util::future::join_all(arrivals.into_iter().map(at)).await, expected);
        batches_seen.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_linger_a_batch_waits_for_nothing() {
        let start = tokio::time::Instant::now();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let batches = Batches::start(4, Duration::ZERO, move |numbers: Vec<u32>| {
            record.lock().unwrap().push((numbers.clone(), start.elapsed().as_micros()));
            async move { numbers }
        });
        assert_eq!(batches.submit(1).await, Some(1));
        // Between two of the timer wheel's milliseconds, moved by hand (a sleep would end on
        // one): a timer set now would only go off at the next, to which the paused clock jumps.
        tokio::time::advance(Duration::from_micros(5_500)).await;
        let both = futures_util::future::join(batches.submit(2), batches.submit(3)).await;
        assert_eq!(both, (Some(2), Some(3)));
        assert_eq!(*seen.lock().unwrap(), [(vec![1], 0), (vec![2, 3], 5_500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn under_light_load_a_batch_waits_its_whole_bound_for_more() {
        let arrivals = vec![(0, 1), (30, 2), (300, 3), (600, 4), (601, 5), (602, 6), (603, 7)];
        let expected = [
            (vec![1, 2], 50),        // 1 waits the whole 50 ms, and 2 joins it
            (vec![3], 350),          // nobody joins 3 within its 50 ms
            (vec![4, 5, 6, 7], 603), // a full batch goes without waiting out its bound
        ];
        assert_eq!(batches_of(4, Duration::from_millis(50), arrivals).await, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_steady_stream_a_batch_waits_only_for_a_few_more() {
        // One request every 2 ms for 400 ms: a batch waits for about MORE more, about 6 ms,
        // not its whole 50 ms bound (which would make batches of 25).
        let arrivals = (0..200).map(|n| (2 * u64::from(n), n)).collect();
        let seen = batches_of(64, Duration::from_millis(50), arrivals).await;
        let settled: Vec<_> = seen.iter().filter(|(_, ms)| *ms > 200).map(|(b, _)| b.len()).collect();
        assert!(settled.len() > 20 && settled.iter().all(|&n| n <= 5), "batch sizes: {settled:?}");
    }
}
