//! The load generator of the standard workloads (`shared/WORKLOADS.md`).
//!
//! `loadtest w1`: private text messages to the webhook through Nginx, closed-loop at a fixed
//! concurrency or open-loop at a fixed arrival rate. `loadtest w2`: cached feed reads through
//! Nginx (80% page 1, 15% a next page by cursor, 5% one post), with `If-None-Match` as browsers
//! send it; `--static PATH` reads one static file instead, for the Nginx baseline.
//!
//! Senders are 10,000 user ids drawn with a Zipf skew (s = 1.1), partitioned over the lanes so
//! that a chat never has two updates in flight, as with Telegram. In open-loop mode latency is
//! measured from each update's intended send time, so a stalled server shows up as latency
//! instead of hiding as fewer requests (no coordinated omission). Prints one JSON object.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

mod attack;
mod broadcast;
mod chart;
mod cli;
mod histogram;
mod replay;
mod scenario;
mod w3;

use std::process::ExitCode;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use cli::{Cli, Command, Common, Lanes};
use histogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

const USERS: usize = 10_000;
const ZIPF_S: f64 = 1.1;

/// What the W1 and W2 lanes read of the command line.
struct Options {
    lanes: Lanes,
    /// Updates per second (open loop); none for closed loop.
    rate: Option<f64>,
    /// W2 only: request this path for every request instead (the static-file baseline).
    static_path: Option<String>,
}

/// The cluster's KEY=VALUE file.
struct Env(HashMap<String, String>);

impl Env {
    fn read(path: &str) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Ok(Self(botfleet::settings::parse_env_file(&text).map_err(|e| anyhow::anyhow!("{path}: {e}"))?))
    }

    fn get(&self, key: &str) -> anyhow::Result<String> {
        self.0.get(key).cloned().with_context(|| format!("{key} missing from the env file"))
    }
}

/// xorshift64*: fast, seedable, plenty for picking senders and texts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The users a lane owns, with the cumulative Zipf weights of their ranks.
struct Senders {
    users: Vec<i64>,
    cdf: Vec<f64>,
}

impl Senders {
    fn for_lane(lane: usize, lanes: usize) -> Self {
        let users: Vec<i64> =
            (1..=USERS).filter(|rank| (rank - 1) % lanes == lane).map(|r| r as i64).collect();
        let mut total = 0.0;
        let cdf = users
            .iter()
            .map(|rank| {
                total += 1.0 / (*rank as f64).powf(ZIPF_S);
                total
            })
            .collect();
        Self { users, cdf }
    }

    fn pick(&self, rng: &mut Rng) -> i64 {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let at = rng.unit() * total;
        let index = self.cdf.partition_point(|c| *c < at).min(self.users.len() - 1);
        self.users[index]
    }
}

const WORDS: &[&str] = &[
    "botfleet", "feed", "posts", "scale", "telegram", "webhook", "replica", "latency", "cluster", "order",
    "durable", "redis", "postgres", "nginx", "stream", "reader", "writer", "hello", "world", "today",
];

fn update(update_id: i64, user: i64, rng: &mut Rng) -> String {
    let target = 20 + (rng.next() % 281) as usize;
    let mut text = String::with_capacity(target + 16);
    while text.len() < target {
        text.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    let text = text.trim_end();
    // Written out rather than built as a `serde_json::Value`: the driver shares the machine
    // with what it measures, so it spends as little as it can. The words need no escaping.
    format!(
        concat!(
            r#"{{"update_id":{update_id},"message":{{"message_id":{update_id},"#,
            r#""from":{{"id":{user},"is_bot":false,"first_name":"User {user}","username":"user{user}","language_code":"en"}},"#,
            r#""chat":{{"id":{user},"type":"private","first_name":"User {user}","username":"user{user}"}},"#,
            r#""date":1790000000,"text":"{text}"}}}}"#
        ),
        update_id = update_id,
        user = user,
        text = text,
    )
}

#[derive(Default)]
struct LaneResult {
    latencies: Vec<Duration>,
    /// When each request ended, since the start (for the chart), in the order of `latencies`.
    finished: Vec<Duration>,
    ok: u64,
    /// W2: answers 304 Not Modified (counted in `ok` too).
    not_modified: u64,
    non_2xx: u64,
    errors: u64,
}

struct Target {
    /// For W2's reads and the discovery before them.
    client: reqwest::Client,
    /// `host:port` and path of the webhook.
    host: String,
    path: String,
    secret: String,
    next_id: AtomicI64,
}

/// A W1 lane's own keep-alive HTTP/1.1 connection, opened again after an error. Lighter than a
/// pooled client, as pgbench's connections are: the driver shares the machine it measures.
type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Target {
    async fn connect(&self) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(&self.host).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    async fn send(&self, connection: &mut Option<Connection>, body: String, result: &mut LaneResult) {
        let status = async {
            let sender = match connection {
                Some(sender) if !sender.is_closed() => sender,
                _ => connection.insert(self.connect().await?),
            };
            sender.ready().await?;
            let request = hyper::Request::post(&self.path)
                .header("host", &self.host)
                .header("x-telegram-bot-api-secret-token", &self.secret)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        };
        match status.await {
            Ok(status) if status.is_success() => result.ok += 1,
            Ok(_) => result.non_2xx += 1,
            Err(_) => {
                *connection = None;
                result.errors += 1;
            }
        }
    }
}

async fn lane(target: Arc<Target>, lane: usize, options: Arc<Options>, started: Instant) -> LaneResult {
    let senders = Senders::for_lane(lane, options.lanes.concurrency);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (lane as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let mut result = LaneResult::default();
    let end = started + options.lanes.duration;
    let mut k = 0u64;
    let mut connection = None;
    loop {
        // Open loop: this lane's k-th arrival is due at a fixed time, whether or not we are late.
        let due = match options.rate {
            Some(rate) => {
                started
                    + Duration::from_secs_f64(
                        (k * options.lanes.concurrency as u64 + lane as u64) as f64 / rate,
                    )
            }
            None => Instant::now(),
        };
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let id = target.next_id.fetch_add(1, Ordering::Relaxed);
        let body = update(id, senders.pick(&mut rng), &mut rng);
        target.send(&mut connection, body, &mut result).await;
        result.latencies.push(due.elapsed());
        result.finished.push(started.elapsed());
        k += 1;
    }
    result
}

/// What a W2 lane reads: page-1 URLs, next pages by cursor, single posts.
struct Reads {
    base: String,
    cursors: Vec<String>,
    max_post_id: i64,
}

/// Pages 2..=11 of the feed (their cursors), and the newest post id, read once at the start.
async fn discover(client: &reqwest::Client, base: &str) -> anyhow::Result<Reads> {
    let mut cursors = Vec::new();
    let mut url = format!("{base}/api/feed?limit=20");
    let mut max_post_id = 1;
    for _ in 0..11 {
        let page: serde_json::Value = serde_json::from_slice(&client.get(&url).send().await?.bytes().await?)?;
        if let Some(id) = page["posts"][0]["id"].as_i64() {
            max_post_id = max_post_id.max(id);
        }
        let Some(next) = page["next_cursor"].as_str() else { break };
        cursors.push(next.to_owned());
        url = format!("{base}/api/feed?limit=20&cursor={next}");
    }
    Ok(Reads { base: base.to_owned(), cursors, max_post_id })
}

async fn w2_lane(
    client: reqwest::Client,
    reads: Arc<Reads>,
    lane: usize,
    options: Arc<Options>,
    started: Instant,
) -> LaneResult {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (lane as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut etags: HashMap<String, String> = HashMap::new();
    let mut result = LaneResult::default();
    let end = started + options.lanes.duration;
    while Instant::now() < end {
        // 80% page 1, 15% a next page by cursor, 5% one post (as WORKLOADS.md says).
        let path = match (&options.static_path, rng.unit()) {
            (Some(path), _) => path.clone(),
            (None, r) if r < 0.80 || reads.cursors.is_empty() => "/api/feed?limit=20".to_owned(),
            (None, r) if r < 0.95 => {
                let cursor = &reads.cursors[(rng.next() % reads.cursors.len() as u64) as usize];
                format!("/api/feed?limit=20&cursor={cursor}")
            }
            (None, _) => format!("/api/posts/{}", 1 + (rng.next() % reads.max_post_id as u64)),
        };
        let mut request = client.get(format!("{}{path}", reads.base));
        if let Some(etag) = etags.get(&path) {
            request = request.header("if-none-match", etag);
        }
        let sent = Instant::now();
        match request.send().await {
            Ok(response) if response.status() == reqwest::StatusCode::NOT_MODIFIED => {
                result.ok += 1;
                result.not_modified += 1;
            }
            Ok(response) if response.status().is_success() => {
                if let Some(etag) = response.headers().get("etag").and_then(|e| e.to_str().ok()) {
                    etags.insert(path, etag.to_owned());
                }
                // Read the whole body, as a browser would.
                if response.bytes().await.is_ok() {
                    result.ok += 1;
                } else {
                    result.errors += 1;
                }
            }
            Ok(response)
                if response.status() == reqwest::StatusCode::NOT_FOUND && path.starts_with("/api/posts/") =>
            {
                // A post id that is not public: a real answer, counted as served.
                result.ok += 1;
            }
            Ok(_) => result.non_2xx += 1,
            Err(_) => result.errors += 1,
        }
        result.latencies.push(sent.elapsed());
        result.finished.push(started.elapsed());
    }
    result
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return botfleet::cli::exit("loadtest", &e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Chart { csv, out } => {
            let text = std::fs::read_to_string(&csv).with_context(|| format!("reading {csv}"))?;
            std::fs::write(out, chart::csv(&text)?)?;
            Ok(())
        }
        Command::Replay(args) => {
            let passed = replay::run(replay::Replay {
                env: Env::read(&args.common.env)?.0,
                arrival: args.arrival(),
                captures: args.capture,
                scenario: args.scenario,
                max_connections: args.max_connections,
                first_update_id: args.common.first_update_id,
                subscribers: args.subscribers,
                out: args.out,
                give_up_after: args.give_up_after,
            })
            .await?;
            if !passed {
                bail!("the audit failed: see the summary above");
            }
            Ok(())
        }
        Command::Attack(args) => {
            let attack = attack::Attack {
                kind: args.kind,
                target: args.target,
                from: args.from,
                lanes: args.lanes,
                duration: args.duration,
                post: args.post,
            };
            println!("{}", attack::run(attack).await?);
            Ok(())
        }
        Command::Broadcast(args) => {
            let env = Env::read(&args.common.env)?;
            let summary = broadcast::run(broadcast::Broadcast {
                webhook_url: env.get("BOTFLEET_WEBHOOK_URL")?,
                secret: env.get("BOTFLEET_WEBHOOK_SECRET")?,
                telegram_url: env.get("BOTFLEET_TELEGRAM_URL")?,
                recipients: args.recipients,
                allowed: args.rate,
                paid: args.paid,
                update_id: args.common.first_update_id.unwrap_or(1),
            })
            .await?;
            println!("{summary}");
            Ok(())
        }
        Command::W3(args) => {
            let env = Env::read(&args.common.env)?;
            let summary = w3::run(w3::W3 {
                clients: args.clients,
                stream_url: args.stream,
                webhook_url: env.get("BOTFLEET_WEBHOOK_URL")?,
                secret: env.get("BOTFLEET_WEBHOOK_SECRET")?,
                rate: args.rate,
                seconds: args.duration.as_secs(),
                first_update_id: args.common.first_update_id.unwrap_or(1),
                pid: args.pid,
                publish: args.publish,
            })
            .await?;
            println!("{summary}");
            Ok(())
        }
        Command::W1(args) => {
            let options = Options { lanes: args.lanes, rate: args.rate, static_path: None };
            closed_or_open(Workload::W1, &args.common, options, args.out).await
        }
        Command::W2(args) => {
            let options = Options { lanes: args.lanes, rate: None, static_path: args.static_path };
            closed_or_open(Workload::W2, &args.common, options, None).await
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    W1,
    W2,
}

/// W1 or W2: lanes sending for the run's duration, then one JSON summary.
async fn closed_or_open(
    workload: Workload,
    common: &Common,
    options: Options,
    out: Option<String>,
) -> anyhow::Result<()> {
    if options.lanes.concurrency == 0 || options.lanes.concurrency > USERS {
        bail!("--concurrency must be 1 to {USERS}, so that every lane owns senders");
    }
    let env = Env::read(&common.env)?;
    let options = Arc::new(options);
    let first_update_id = common.first_update_id.unwrap_or(1);
    let webhook = reqwest::Url::parse(&env.get("BOTFLEET_WEBHOOK_URL")?)?;
    let target = Arc::new(Target {
        client: reqwest::Client::builder().pool_max_idle_per_host(options.lanes.concurrency).build()?,
        host: format!(
            "{}:{}",
            webhook.host_str().unwrap_or("127.0.0.1"),
            webhook.port_or_known_default().unwrap_or(80)
        ),
        path: webhook.path().to_owned(),
        secret: env.get("BOTFLEET_WEBHOOK_SECRET")?,
        next_id: AtomicI64::new(first_update_id),
    });
    let started = Instant::now();
    let lanes: Vec<_> = match workload {
        Workload::W1 => (0..options.lanes.concurrency)
            .map(|n| tokio::spawn(lane(target.clone(), n, options.clone(), started)))
            .collect(),
        Workload::W2 => {
            let reads = Arc::new(discover(&target.client, &env.get("BOTFLEET_URL")?).await?);
            let started = Instant::now();
            (0..options.lanes.concurrency)
                .map(|n| {
                    tokio::spawn(w2_lane(target.client.clone(), reads.clone(), n, options.clone(), started))
                })
                .collect()
        }
    };
    let mut all = LaneResult::default();
    for lane in lanes {
        let result = lane.await?;
        all.latencies.extend(result.latencies);
        all.finished.extend(result.finished);
        all.ok += result.ok;
        all.not_modified += result.not_modified;
        all.non_2xx += result.non_2xx;
        all.errors += result.errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(out) = &out {
        let series = chart::per_second(all.finished.iter().copied().zip(all.latencies.iter().copied()));
        std::fs::create_dir_all(out)?;
        std::fs::write(format!("{out}/chart.svg"), chart::svg(&series))?;
    }
    let mut latency = Histogram::default();
    all.latencies.iter().for_each(|l| latency.record(*l));
    let summary = json!({
        "workload": if workload == Workload::W1 { "W1" } else { "W2" },
        "static": options.static_path,
        "not_modified": all.not_modified,
        "mode": if options.rate.is_some() { "open" } else { "closed" },
        "concurrency": options.lanes.concurrency,
        "rate": options.rate,
        "seconds": elapsed,
        "sent": all.latencies.len(),
        "ok": all.ok,
        "non_2xx": all.non_2xx,
        "errors": all.errors,
        "throughput": all.ok as f64 / elapsed,
        "p50_ms": latency.percentile_ms(0.50),
        "p99_ms": latency.percentile_ms(0.99),
        "p999_ms": latency.percentile_ms(0.999),
        "first_update_id": first_update_id,
        "last_update_id": target.next_id.load(Ordering::Relaxed) - 1,
    });
    println!("{summary}");
    Ok(())
}
