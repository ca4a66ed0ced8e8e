//! `loadtest replay`: delivers a capture or a synthetic scenario to a cluster's webhook the way
//! Telegram does (`botfleet::replay`), with optional SSE subscribers, then audits exactly-once
//! and writes a summary, JSON results and a chart.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use botfleet::replay::{Arrival, Delivered, Progress, Recorded, Webhook, deliver_all, read_capture};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::histogram::Histogram;
use crate::scenario::Scenario;
use botfleet::replay::audit::{Audit, audit};

pub struct Replay {
    pub env: HashMap<String, String>,
    /// Capture files (JSONL), merged; or a scenario file.
    pub captures: Vec<String>,
    pub scenario: Option<String>,
    pub arrival: Arrival,
    pub max_connections: usize,
    /// The first update id of the replay (updates are renumbered from it, in order); none: after
    /// every update the cluster's database knows.
    pub first_update_id: Option<i64>,
    pub subscribers: usize,
    /// Where results.json and chart.svg go.
    pub out: Option<String>,
    pub give_up_after: Duration,
}

pub async fn run(replay: Replay) -> anyhow::Result<bool> {
    let get =
        |key: &str| replay.env.get(key).cloned().with_context(|| format!("{key} missing from the env file"));
    let primary = get("BOTFLEET_PRIMARY_URL")?;
    let bot_id: i64 = get("BOTFLEET_BOT_TOKEN")?.split(':').next().unwrap_or_default().parse()?;
    let mut updates = match &replay.scenario {
        Some(path) => {
            Scenario::parse(&std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?)?
                .generate(0)
        }
        None => {
            let mut all = String::new();
            for path in &replay.captures {
                all += &std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
                all.push('\n');
            }
            read_capture(&all).map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    if updates.is_empty() {
        bail!("nothing to replay");
    }
    let first = match replay.first_update_id {
        Some(first) => first,
        None => {
            let row = botfleet::store::connect(&primary)
                .await?
                .query_one(
                    "SELECT greatest((SELECT max(update_id) FROM posts), (SELECT max(update_id) FROM dead_letters))",
                    &[],
                )
                .await?;
            row.get::<_, Option<i64>>(0).unwrap_or(0) + 1_000_000
        }
    };
    for (n, update) in updates.iter_mut().enumerate() {
        update.update["update_id"] = json!(first + n as i64);
    }
    let telegram = replay.env.get("BOTFLEET_TELEGRAM_URL").cloned();
    let client = reqwest::Client::new();
    if let Some(telegram) = &telegram {
        // The fake's log then holds this run's calls only: the audit reads all of it.
        client.post(format!("{telegram}/__fake/reset")).send().await?.error_for_status()?;
    }
    let subscribers = match replay.subscribers {
        0 => None,
        k => Some(Subscribers::connect(&get("BOTFLEET_URL")?, k).await?),
    };
    let webhook = Webhook {
        url: get("BOTFLEET_WEBHOOK_URL")?,
        secret: get("BOTFLEET_WEBHOOK_SECRET")?,
        max_connections: replay.max_connections,
        timeout: Duration::from_secs(60),
        give_up_after: replay.give_up_after,
    };
    let progress = Arc::new(Progress::default());
    let total = updates.len();
    let reporter = tokio::spawn(report_progress(progress.clone(), total));
    let started = tokio::time::Instant::now();
    let delivered = deliver_all(&client, &webhook, updates.clone(), &replay.arrival, progress).await;
    let elapsed = started.elapsed();
    reporter.abort();
    eprintln!();

    // The audit: replies in the fake's log, posts in Postgres.
    let acknowledged: HashMap<i64, &Delivered> =
        delivered.iter().filter(|d| d.acknowledged).map(|d| (d.update_id, d)).collect();
    let pairs: Vec<(&Value, bool)> = updates
        .iter()
        .map(|u| (&u.update, u.update_id().is_some_and(|id| acknowledged.contains_key(&id))))
        .collect();
    let calls: Vec<Value> = match &telegram {
        Some(telegram) => client.get(format!("{telegram}/__fake/calls")).send().await?.json().await?,
        None => Vec::new(),
    };
    let ids: Vec<i64> = updates.iter().filter_map(Recorded::update_id).collect();
    // A connection of its own: the primary may have restarted during the run (loadtest/chaos).
    let rows = botfleet::store::connect(&primary)
        .await?
        .query(
            "SELECT update_id, count(*), max(id) FILTER (WHERE status = 'published') FROM posts
             WHERE bot_id = $1 AND update_id = ANY($2) GROUP BY update_id",
            &[&bot_id, &ids],
        )
        .await?;
    let posts: HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let dead: std::collections::HashSet<i64> = botfleet::store::connect(&primary)
        .await?
        .query(
            "SELECT update_id FROM dead_letters WHERE bot_id = $1 AND update_id = ANY($2)",
            &[&bot_id, &ids],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut result = audit(&pairs, &calls, (&posts, &dead));
    if telegram.is_none() {
        // Against a real Telegram the replies cannot be seen: only posts are audited.
        result.audited = 0;
        result.lost = 0;
    }
    let published: Vec<(i64, i64)> =
        rows.iter().filter_map(|r| Some((r.get::<_, Option<i64>>(2)?, r.get(0)))).collect();
    let sse = match subscribers {
        Some(subscribers) => Some(subscribers.finish(&published, &delivered, started).await),
        None => None,
    };
    let summary = summarise(&delivered, elapsed, &result, sse.as_ref());
    print_table(&summary);
    if let Some(out) = &replay.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(format!("{out}/results.json"), serde_json::to_string_pretty(&summary)?)?;
        std::fs::write(format!("{out}/chart.svg"), crate::chart::svg(&series(&delivered)))?;
    }
    println!("{summary}");
    let sse_clean = sse.as_ref().is_none_or(|s| s["missed"] == 0);
    Ok(result.passed() && sse_clean)
}

/// A line a second on stderr: acknowledged so far, the rate and the slowest acknowledgement of
/// the last second, failed attempts, updates given up.
async fn report_progress(progress: Arc<Progress>, total: usize) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = 0;
    loop {
        tick.tick().await;
        let acknowledged = progress.acknowledged.load(Ordering::Relaxed);
        let width = 30;
        let done = (acknowledged as usize * width / total.max(1)).min(width);
        let line = format!(
            "[{}{}] {acknowledged}/{total} acknowledged, {}/s, slowest {:.1} ms, {} failed attempts, {} given up",
            "#".repeat(done),
            " ".repeat(width - done),
            acknowledged - last,
            progress.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
            progress.failures.load(Ordering::Relaxed),
            progress.given_up.load(Ordering::Relaxed),
        );
        last = acknowledged;
        if terminal { eprint!("\r{line}") } else { eprintln!("{line}") }
    }
}

/// Per second of the run: acknowledgements, p50 and p99 latency (ms).
fn series(delivered: &[Delivered]) -> Vec<(f64, f64, f64)> {
    crate::chart::per_second(
        delivered.iter().filter(|d| d.acknowledged).map(|d| (d.due + d.latency, d.latency)),
    )
}

fn summarise(delivered: &[Delivered], elapsed: Duration, audit: &Audit, sse: Option<&Value>) -> Value {
    let mut latency = Histogram::default();
    for d in delivered.iter().filter(|d| d.acknowledged) {
        latency.record(d.latency);
    }
    let attempts: u64 = delivered.iter().map(|d| u64::from(d.attempts)).sum();
    // From its due time to its acknowledgement, redeliveries included: after a fault, how long
    // the cluster took to recover for the update it hit hardest.
    let slowest = delivered.iter().filter(|d| d.acknowledged).map(|d| d.latency).max().unwrap_or_default();
    json!({
        "workload": "replay",
        "updates": delivered.len(),
        "acknowledged": audit.acknowledged,
        "given_up": delivered.iter().filter(|d| !d.acknowledged).count(),
        "redeliveries": attempts - delivered.len() as u64,
        "seconds": elapsed.as_secs_f64(),
        "throughput": audit.acknowledged as f64 / elapsed.as_secs_f64(),
        "p50_ms": latency.percentile_ms(0.5),
        "p99_ms": latency.percentile_ms(0.99),
        "p999_ms": latency.percentile_ms(0.999),
        "slowest_s": (slowest.as_secs_f64() * 100.0).round() / 100.0,
        "audit": audit,
        "passed": audit.passed(),
        "sse": sse,
    })
}

fn print_table(summary: &Value) {
    let rows = [
        ("updates", summary["updates"].to_string()),
        ("acknowledged", summary["acknowledged"].to_string()),
        ("given up", summary["given_up"].to_string()),
        ("redeliveries", summary["redeliveries"].to_string()),
        ("throughput /s", format!("{:.1}", summary["throughput"].as_f64().unwrap_or(0.0))),
        (
            "p50 / p99 / p99.9 ms",
            format!(
                "{:.1} / {:.1} / {:.1}",
                summary["p50_ms"].as_f64().unwrap_or(0.0),
                summary["p99_ms"].as_f64().unwrap_or(0.0),
                summary["p999_ms"].as_f64().unwrap_or(0.0)
            ),
        ),
        ("audited", summary["audit"]["audited"].to_string()),
        ("lost", summary["audit"]["lost"].to_string()),
        ("duplicated", summary["audit"]["duplicated"].to_string()),
        ("in doubt", summary["audit"]["in_doubt"].to_string()),
        ("out of order", summary["audit"]["out_of_order"].to_string()),
        ("dead-lettered", summary["audit"]["dead_lettered"].to_string()),
        ("posts", summary["audit"]["posts"].to_string()),
    ];
    for (name, value) in rows {
        eprintln!("{name:>22}  {value}");
    }
    if summary["sse"].is_object() {
        let sse = &summary["sse"];
        eprintln!(
            "{:>22}  {} clients, {} events missed, {} resumes, p50 {:.1} ms, p99 {:.1} ms",
            "SSE",
            sse["clients"],
            sse["missed"],
            sse["resumes"],
            sse["p50_ms"].as_f64().unwrap_or(0.0),
            sse["p99_ms"].as_f64().unwrap_or(0.0)
        );
    }
    for example in summary["audit"]["examples"].as_array().into_iter().flatten() {
        eprintln!("{:>22}  {}", "", example.as_str().unwrap_or_default());
    }
    eprintln!("{:>22}  {}", "audit", if summary["passed"] == true { "PASSED" } else { "FAILED" });
}

/// What one client has seen: each post's arrival.
type Seen = Arc<std::sync::Mutex<HashMap<i64, tokio::time::Instant>>>;

/// After `event: resync` (the stream lost what the client missed): the feed's pages from the
/// top, as a reader scrolls them, until a page brings nothing new (twenty at most); each post on
/// them counts as arrived now.
async fn reload(base: &str, seen: &Seen) {
    let client = reqwest::Client::new();
    let mut url = format!("{base}/api/feed?limit=100");
    for _ in 0..20 {
        let Ok(response) = client.get(&url).send().await else { return };
        let next = response.headers().get(reqwest::header::LINK).and_then(|link| {
            link.to_str().ok()?.split_once('<')?.1.split_once('>').map(|(path, _)| path.to_owned())
        });
        let Ok(page) = response.json::<Value>().await else { return };
        let now = tokio::time::Instant::now();
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut new = false;
        for id in page["posts"].as_array().into_iter().flatten().filter_map(|post| post["id"].as_i64()) {
            if let std::collections::hash_map::Entry::Vacant(first) = seen.entry(id) {
                first.insert(now);
                new = true;
            }
        }
        match next {
            Some(path) if new => url = format!("{base}{path}"),
            _ => return,
        }
    }
}

/// K clients on the feed stream, each noting when every post arrived.
struct Subscribers {
    seen: Vec<Seen>,
    /// Woken at every event any client receives.
    arrived: Arc<tokio::sync::Notify>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    /// Streams opened again after they ended.
    resumes: Arc<AtomicU64>,
}

impl Subscribers {
    async fn connect(base: &str, k: usize) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(base)?;
        let addr = format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port_or_known_default().unwrap_or(80)
        );
        let arrived = Arc::new(tokio::sync::Notify::new());
        let resumes = Arc::new(AtomicU64::new(0));
        let (mut seen, mut clients) = (Vec::with_capacity(k), Vec::with_capacity(k));
        for _ in 0..k {
            let mut opened = Some(crate::w3::open(&addr, "/api/feed/stream", None).await?);
            let mine: Seen = Arc::default();
            seen.push(mine.clone());
            let (arrived, addr, resumes) = (arrived.clone(), addr.clone(), resumes.clone());
            let base = base.to_owned();
            clients.push(tokio::spawn(async move {
                // As a browser does: a stream that ends (a slow client is dropped) is opened
                // again with the last event's id, and the node replays what was missed.
                let mut last_id: Option<String> = None;
                loop {
                    let connected = match opened.take() {
                        Some(connected) => Ok(connected),
                        None => {
                            resumes.fetch_add(1, Ordering::Relaxed);
                            crate::w3::open(&addr, "/api/feed/stream", last_id.as_deref()).await
                        }
                    };
                    let Ok(crate::w3::Opened { mut stream, buffer: mut raw, chunked }) = connected else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let mut buffer = Vec::new();
                    loop {
                        // Through Nginx the stream is chunked, and a read may end inside a chunk.
                        if !chunked {
                            buffer.append(&mut raw);
                        } else if !crate::w3::dechunk(&mut raw, &mut buffer) {
                            break;
                        }
                        let mut start = 0;
                        while let Some(end) = crate::w3::find(&buffer[start..], b"\n\n") {
                            let event = String::from_utf8_lossy(&buffer[start..start + end]);
                            for line in event.lines() {
                                if line == "event: resync" {
                                    // As the live page does: reload the feed from the top.
                                    reload(&base, &mine).await;
                                    arrived.notify_waiters();
                                } else if let Some(id) = line.strip_prefix("id: ") {
                                    last_id = Some(id.to_owned());
                                } else if let Some(data) = line.strip_prefix("data: {\"id\":") {
                                    let digits: String =
                                        data.chars().take_while(char::is_ascii_digit).collect();
                                    if let Ok(post) = digits.parse() {
                                        let now = tokio::time::Instant::now();
                                        mine.lock()
                                            .unwrap_or_else(|p| p.into_inner())
                                            .entry(post)
                                            .or_insert(now);
                                        arrived.notify_waiters();
                                    }
                                }
                            }
                            start += end + 2;
                        }
                        buffer.drain(..start);
                        if !matches!(stream.read_buf(&mut raw).await, Ok(n) if n > 0) {
                            break;
                        }
                    }
                }
            }));
        }
        Ok(Self { seen, arrived, clients, resumes })
    }

    /// Waits (at most 10 s) until every client has every post of `published` (post id, update
    /// id), then reports the posts missed and publish-to-delivery latency from each update's
    /// acknowledgement.
    async fn finish(
        self,
        published: &[(i64, i64)],
        delivered: &[Delivered],
        started: tokio::time::Instant,
    ) -> Value {
        let acked_at: HashMap<i64, tokio::time::Instant> = delivered
            .iter()
            .filter(|d| d.acknowledged)
            .map(|d| (d.update_id, started + d.due + d.latency))
            .collect();
        let complete = || {
            self.seen.iter().all(|seen| {
                let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                published.iter().all(|(post, _)| seen.contains_key(post))
            })
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let arrived = self.arrived.notified();
                if complete() {
                    return;
                }
                arrived.await;
            }
        })
        .await;
        self.clients.iter().for_each(tokio::task::JoinHandle::abort);
        let mut latency = Histogram::default();
        let mut missed = 0u64;
        let mut missed_posts = std::collections::BTreeSet::new();
        for seen in &self.seen {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            for (post, update) in published {
                match (seen.get(post), acked_at.get(update)) {
                    (Some(arrived), Some(acked)) => latency.record(arrived.saturating_duration_since(*acked)),
                    (Some(_), None) => {}
                    (None, _) => {
                        missed += 1;
                        missed_posts.insert(*post);
                    }
                }
            }
        }
        json!({
            "clients": self.seen.len(),
            "posts": published.len(),
            "missed": missed,
            "resumes": self.resumes.load(Ordering::Relaxed),
            "missed_posts": missed_posts.iter().take(20).collect::<Vec<_>>(),
            "p50_ms": latency.percentile_ms(0.5),
            "p99_ms": latency.percentile_ms(0.99),
        })
    }
}
