//! `loadtest w3`: live fan-out. K clients hold `GET /api/feed/stream` open on one API node while
//! posts are published through the webhook at a fixed rate; every client must receive every
//! post. Publish-to-delivery latency runs, as W3 defines it, from the webhook's 2xx answer to the
//! event's arrival at each client (an event that arrives before the answer counts as 0); the
//! latency from the moment the update is sent, which adds the worker's handling of the update,
//! is reported beside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Latency histogram: 0.1 ms buckets up to 10 s.
const BUCKETS: usize = 100_000;
/// Clients connecting at the same moment (the listen backlog is finite).
const CONNECT_BATCH: usize = 500;

pub struct W3 {
    pub clients: usize,
    pub stream_url: String,
    pub webhook_url: String,
    pub secret: String,
    pub rate: f64,
    pub seconds: u64,
    pub first_update_id: i64,
    /// The API node's pid, for its memory and CPU.
    pub pid: Option<u32>,
}

struct Shared {
    /// When each post was sent, in µs since `started` (0: not yet), by its index in the run.
    sent: Vec<AtomicU64>,
    /// When each post's 2xx answer arrived, likewise.
    answered: Vec<AtomicU64>,
    started: Instant,
    first_update_id: i64,
    from_answer: Latencies,
    from_send: Latencies,
    received: AtomicU64,
    /// How many events the run expects; the last one to arrive wakes `all_received`.
    expected: AtomicU64,
    all_received: tokio::sync::Notify,
    connected: AtomicUsize,
}

impl Shared {
    /// An event of the post of `update_id` arrived now.
    fn record(&self, update_id: i64) {
        let Some(k) = usize::try_from(update_id - self.first_update_id).ok().filter(|k| *k < self.sent.len())
        else {
            return;
        };
        let sent = self.sent[k].load(Ordering::Relaxed);
        if sent == 0 {
            return;
        }
        let now = self.started.elapsed().as_micros() as u64;
        self.from_send.record(now.saturating_sub(sent));
        // Not answered yet: the event came first.
        let answered = self.answered[k].load(Ordering::Relaxed);
        self.from_answer.record(if answered == 0 { 0 } else { now.saturating_sub(answered) });
        if self.received.fetch_add(1, Ordering::Relaxed) + 1 >= self.expected.load(Ordering::Relaxed) {
            self.all_received.notify_waiters();
        }
    }

    /// Waits until `expected` events arrived, or `limit` passed.
    async fn received_all(&self, expected: u64, limit: Duration) {
        let woken = self.all_received.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        self.expected.store(expected, Ordering::Relaxed);
        if self.received.load(Ordering::Relaxed) >= expected {
            return;
        }
        let _ = tokio::time::timeout(limit, woken).await;
    }
}

/// Latencies in 0.1 ms buckets up to 10 s, recorded by every client at once (atomic, unlike
/// [`crate::histogram::Histogram`]).
struct Latencies(Vec<AtomicU64>);

impl Latencies {
    fn new() -> Self {
        Self((0..BUCKETS).map(|_| AtomicU64::new(0)).collect())
    }

    fn record(&self, latency_us: u64) {
        let bucket = ((latency_us / 100) as usize).min(BUCKETS - 1);
        self.0[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn percentile(&self, p: f64) -> f64 {
        let counts: Vec<u64> = self.0.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let target = ((total as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= target.max(1) {
                return (bucket as f64 + 1.0) / 10.0;
            }
        }
        0.0
    }
}

fn proc_stat(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss_kib, ticks as f64 / 100.0))
}

/// One client, on a bare TCP connection (an HTTP client library per event would cost the driver
/// more than the node it measures): says whether it connected, then reads events until `stop`,
/// recording each post's arrival.
async fn client(
    addr: Arc<str>,
    path: Arc<str>,
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    connected: tokio::sync::mpsc::Sender<bool>,
) {
    let opened = open(&addr, &path, None).await;
    let _ = connected.send(opened.is_ok()).await;
    let Ok(Opened { mut stream, mut buffer, .. }) = opened else { return };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        // Events end with a blank line; a chunked encoding's framing around them would not
        // matter here. Only the post's id is needed, from its text "w3-<id> …".
        let mut start = 0;
        while let Some(end) = find(&buffer[start..], b"\n\n") {
            if let Some(id) = post_id(&buffer[start..start + end]) {
                shared.record(id);
            }
            start += end + 2;
        }
        buffer.drain(..start);
        let read = tokio::select! {
            () = &mut stopped => return,
            read = stream.read_buf(&mut buffer) => read,
        };
        if !matches!(read, Ok(n) if n > 0) {
            return;
        }
    }
}

/// An open stream: the connection, what came after the answer's head, and whether the body is
/// chunked (through Nginx) or runs until the connection closes (a node's own streams).
pub(crate) struct Opened {
    pub stream: TcpStream,
    pub buffer: Vec<u8>,
    pub chunked: bool,
}

/// Sends the stream's request and reads the answer's head.
pub(crate) async fn open(addr: &str, path: &str, last_event_id: Option<&str>) -> anyhow::Result<Opened> {
    let mut stream = TcpStream::connect(addr).await?;
    let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buffer = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buffer).await? == 0 {
            bail!("the stream closed before its head");
        }
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            if !buffer.starts_with(b"HTTP/1.1 200") {
                bail!("the stream answered {}", String::from_utf8_lossy(&buffer[..end]));
            }
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let chunked = head.contains("\r\ntransfer-encoding: chunked");
            buffer.drain(..end + 4);
            return Ok(Opened { stream, buffer, chunked });
        }
    }
}

/// Moves the payload of every complete chunk at the start of `raw` (HTTP/1.1 chunked encoding)
/// to the end of `out`; an incomplete chunk stays in `raw`. Returns false at the last chunk.
pub(crate) fn dechunk(raw: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    let mut at = 0;
    while let Some(line) = find(&raw[at..], b"\r\n") {
        let size = std::str::from_utf8(&raw[at..at + line])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { break };
        let start = at + line + 2;
        if raw.len() < start + size + 2 {
            break;
        }
        if size == 0 {
            raw.clear();
            return false;
        }
        out.extend_from_slice(&raw[start..start + size]);
        at = start + size + 2;
    }
    raw.drain(..at);
    true
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// The update id in a post event's text `"w3-<id> …"`, if the event is one.
fn post_id(event: &[u8]) -> Option<i64> {
    const MARK: &[u8] = b"\"text\":\"w3-";
    let at = find(event, MARK)? + MARK.len();
    let digits = event[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&event[at..at + digits]).ok()?.parse().ok()
}

pub async fn run(w3: W3) -> anyhow::Result<Value> {
    let posts = (w3.rate * w3.seconds as f64) as i64;
    let shared = Arc::new(Shared {
        sent: (0..posts).map(|_| AtomicU64::new(0)).collect(),
        answered: (0..posts).map(|_| AtomicU64::new(0)).collect(),
        started: Instant::now(),
        first_update_id: w3.first_update_id,
        from_answer: Latencies::new(),
        from_send: Latencies::new(),
        received: AtomicU64::new(0),
        expected: AtomicU64::new(u64::MAX),
        all_received: tokio::sync::Notify::new(),
        connected: AtomicUsize::new(0),
    });
    let before = w3.pid.and_then(proc_stat);
    let stop = Arc::new(tokio::sync::Notify::new());
    let url = reqwest::Url::parse(&w3.stream_url)?;
    let addr: Arc<str> =
        format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port_or_known_default().unwrap_or(80))
            .into();
    let path: Arc<str> = url.path().into();
    let mut tasks = Vec::with_capacity(w3.clients);
    for batch in 0..w3.clients.div_ceil(CONNECT_BATCH) {
        let in_batch = CONNECT_BATCH.min(w3.clients - batch * CONNECT_BATCH);
        let (report, mut reports) = tokio::sync::mpsc::channel(in_batch);
        for _ in 0..in_batch {
            let task = client(addr.clone(), path.clone(), shared.clone(), stop.clone(), report.clone());
            tasks.push(tokio::spawn(task));
        }
        // Each client of the batch says whether it connected, before the next batch starts.
        for _ in 0..in_batch {
            match tokio::time::timeout(Duration::from_secs(30), reports.recv()).await {
                Ok(Some(true)) => {}
                _ => bail!("only {} clients connected", shared.connected.load(Ordering::Relaxed)),
            }
        }
    }
    let connected = proc_stat_or_none(w3.pid);

    let publisher = reqwest::Client::new();
    let started = Instant::now();
    let mut failed = 0;
    for k in 0..posts {
        let due = started + Duration::from_secs_f64(k as f64 / w3.rate);
        tokio::time::sleep_until(due.into()).await;
        let id = w3.first_update_id + k;
        let user = 1 + k % 1000;
        let update = json!({
            "update_id": id,
            "message": {
                "message_id": id, "date": 1_790_000_000, "text": format!("w3-{id} a post for every open stream"),
                "chat": { "id": user, "type": "private", "first_name": "W3" },
                "from": { "id": user, "is_bot": false, "first_name": "W3" },
            }
        });
        shared.sent[k as usize].store(shared.started.elapsed().as_micros().max(1) as u64, Ordering::Relaxed);
        let response = publisher
            .post(&w3.webhook_url)
            .header("x-telegram-bot-api-secret-token", &w3.secret)
            .header("content-type", "application/json")
            .body(update.to_string())
            .send()
            .await;
        if response.is_ok_and(|r| r.status().is_success()) {
            shared.answered[k as usize]
                .store(shared.started.elapsed().as_micros().max(1) as u64, Ordering::Relaxed);
        } else {
            failed += 1;
        }
    }
    let clients = shared.connected.load(Ordering::Relaxed) as u64;
    let expected = (posts - failed) as u64 * clients;
    shared.received_all(expected, Duration::from_secs(10)).await;
    let after = proc_stat_or_none(w3.pid);
    stop.notify_waiters();
    for task in tasks {
        task.abort();
    }
    let received = shared.received.load(Ordering::Relaxed);
    let rss_per_client_kib = match (before, connected) {
        (Some((a, _)), Some((b, _))) if clients > 0 => json!((b.saturating_sub(a)) as f64 / clients as f64),
        _ => Value::Null,
    };
    let cpu = match (connected, after) {
        (Some((_, a)), Some((_, b))) => json!((b - a) / started.elapsed().as_secs_f64()),
        _ => Value::Null,
    };
    Ok(json!({
        "workload": "W3",
        "clients": clients,
        "rate": w3.rate,
        "posts": posts,
        "posts_failed": failed,
        "expected_events": expected,
        "received_events": received,
        "lost_events": expected.saturating_sub(received),
        "p50_ms": shared.from_answer.percentile(0.50),
        "p99_ms": shared.from_answer.percentile(0.99),
        "max_ms": shared.from_answer.percentile(1.0),
        "p50_from_send_ms": shared.from_send.percentile(0.50),
        "p99_from_send_ms": shared.from_send.percentile(0.99),
        "rss_per_client_kib": rss_per_client_kib,
        "api_cpu_cores": cpu,
    }))
}

fn proc_stat_or_none(pid: Option<u32>) -> Option<(u64, f64)> {
    pid.and_then(proc_stat)
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunks_are_decoded_whatever_the_reads_cut() {
        let body = b"id: 1\nevent: post\ndata: {\"id\":1353}\n\n";
        let wire = [
            format!("{:x}\r\n", 10).into_bytes(),
            body[..10].to_vec(),
            b"\r\n".to_vec(),
            format!("{:x}\r\n", body.len() - 10).into_bytes(),
            body[10..].to_vec(),
            b"\r\n0\r\n\r\n".to_vec(),
        ]
        .concat();
        for cut in 0..wire.len() {
            let (mut raw, mut out) = (Vec::new(), Vec::new());
            raw.extend_from_slice(&wire[..cut]);
            super::dechunk(&mut raw, &mut out);
            raw.extend_from_slice(&wire[cut..]);
            assert!(!super::dechunk(&mut raw, &mut out), "the last chunk ends it");
            assert_eq!(out, body, "cut at {cut}");
        }
    }
}
