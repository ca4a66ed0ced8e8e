//! `loadtest w3`: live fan-out. K clients hold `GET /api/feed/stream` open on one API node while
//! posts are published through the webhook at a fixed rate; every client must receive every
//! post. Latency runs from the moment an update is sent to the webhook (so it bounds the
//! publish-to-delivery time from above) to the event's arrival at each client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

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
    sent: Mutex<HashMap<i64, Instant>>,
    buckets: Vec<AtomicU64>,
    received: AtomicU64,
    connected: AtomicUsize,
    /// Woken at every received event, for whoever waits for the last one.
    progress: tokio::sync::Notify,
}

impl Shared {
    fn record(&self, latency: Duration) {
        let bucket = ((latency.as_micros() / 100) as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
        self.progress.notify_waiters();
    }

    /// Waits until `expected` events arrived, or `limit` passed.
    async fn received_all(&self, expected: u64, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let woken = self.progress.notified();
                if self.received.load(Ordering::Relaxed) >= expected {
                    return;
                }
                woken.await;
            }
        })
        .await;
    }

    fn percentile(&self, p: f64) -> f64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
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

/// One client: says whether it connected, then reads events until `stop`, recording each
/// post's latency.
async fn client(
    http: reqwest::Client,
    url: String,
    shared: Arc<Shared>,
    stop: Arc<tokio::sync::Notify>,
    connected: tokio::sync::mpsc::Sender<bool>,
) {
    let response = http.get(&url).send().await.ok().filter(|r| r.status().is_success());
    let _ = connected.send(response.is_some()).await;
    let Some(mut response) = response else { return };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let mut buffer = String::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let chunk = tokio::select! {
            () = &mut stopped => return,
            chunk = response.chunk() => chunk,
        };
        let Ok(Some(chunk)) = chunk else { return };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            let text =
                serde_json::from_str::<Value>(data).ok().and_then(|v| v["text"].as_str().map(str::to_owned));
            let Some(id) =
                text.as_deref().and_then(|t| t.strip_prefix("w3-")?.split(' ').next()?.parse::<i64>().ok())
            else {
                continue;
            };
            let sent = shared.sent.lock().unwrap_or_else(|p| p.into_inner()).get(&id).copied();
            if let Some(sent) = sent {
                shared.record(sent.elapsed());
            }
        }
    }
}

pub async fn run(w3: W3) -> anyhow::Result<Value> {
    let shared = Arc::new(Shared {
        sent: Mutex::new(HashMap::new()),
        buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        received: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        progress: tokio::sync::Notify::new(),
    });
    let before = w3.pid.and_then(proc_stat);
    let stop = Arc::new(tokio::sync::Notify::new());
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut tasks = Vec::with_capacity(w3.clients);
    for batch in 0..w3.clients.div_ceil(CONNECT_BATCH) {
        let in_batch = CONNECT_BATCH.min(w3.clients - batch * CONNECT_BATCH);
        let (report, mut reports) = tokio::sync::mpsc::channel(in_batch);
        for _ in 0..in_batch {
            let task =
                client(http.clone(), w3.stream_url.clone(), shared.clone(), stop.clone(), report.clone());
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

    let posts = (w3.rate * w3.seconds as f64) as i64;
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
        shared.sent.lock().unwrap_or_else(|p| p.into_inner()).insert(id, Instant::now());
        let response = publisher
            .post(&w3.webhook_url)
            .header("x-telegram-bot-api-secret-token", &w3.secret)
            .header("content-type", "application/json")
            .body(update.to_string())
            .send()
            .await;
        if !response.is_ok_and(|r| r.status().is_success()) {
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
        "p50_ms": shared.percentile(0.50),
        "p99_ms": shared.percentile(0.99),
        "max_ms": shared.percentile(1.0),
        "rss_per_client_kib": rss_per_client_kib,
        "api_cpu_cores": cpu,
    }))
}

fn proc_stat_or_none(pid: Option<u32>) -> Option<(u64, f64)> {
    pid.and_then(proc_stat)
}
