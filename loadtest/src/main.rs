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

mod broadcast;
mod chart;
mod histogram;
mod replay;
mod scenario;
mod w3;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

const USERS: usize = 10_000;
const ZIPF_S: f64 = 1.1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    W1,
    W2,
    W3,
    Broadcast,
    Replay,
}

struct Options {
    workload: Workload,
    env: HashMap<String, String>,
    /// W2 only: request this path for every request instead (the static-file baseline).
    static_path: Option<String>,
    /// W3 only: the stream URL of one API node, how many clients, and that node's pid.
    stream: Option<String>,
    clients: usize,
    pid: Option<u32>,
    /// Broadcast only: users it must reach.
    recipients: usize,
    concurrency: usize,
    seconds: u64,
    /// Updates per second (open loop); none for closed loop.
    rate: Option<f64>,
    first_update_id: i64,
    /// Whether --first-update-id was given.
    first_update_id_set: bool,
    /// Replay only: what to replay and how.
    captures: Vec<String>,
    scenario: Option<String>,
    arrival: Option<botfleet::replay::Arrival>,
    max_connections: usize,
    subscribers: usize,
    out: Option<String>,
    give_up_secs: u64,
}

/// `--ramp FROM:TO:SECONDS` or `--step R1,R2,…:SECONDS`.
fn parse_shape(flag: &str, value: &str) -> anyhow::Result<botfleet::replay::Arrival> {
    use botfleet::replay::Arrival;
    let bad = || {
        anyhow::anyhow!(
            "{flag} {value:?}: expected {}",
            if flag == "--ramp" { "FROM:TO:SECONDS" } else { "R1,R2,…:SECONDS" }
        )
    };
    let (rates, seconds) = value.rsplit_once(':').ok_or_else(bad)?;
    let seconds = Duration::from_secs_f64(seconds.parse().map_err(|_| bad())?);
    if flag == "--ramp" {
        let (from, to) = rates.split_once(':').ok_or_else(bad)?;
        return Ok(Arrival::Ramp { from: from.parse()?, to: to.parse()?, over: seconds });
    }
    let rates = rates.split(',').map(str::parse).collect::<Result<Vec<f64>, _>>().map_err(|_| bad())?;
    Ok(Arrival::Step { rates, every: seconds })
}

fn parse_args() -> anyhow::Result<Options> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = match args.first().map(String::as_str) {
        Some("w1") => Workload::W1,
        Some("w2") => Workload::W2,
        Some("w3") => Workload::W3,
        Some("broadcast") => Workload::Broadcast,
        Some("replay") => Workload::Replay,
        _ => bail!(
            "usage: loadtest w1 [--env .cluster/cluster.env] [--concurrency 64] [--seconds 20] [--rate N] [--first-update-id N] [--out DIR]\n       loadtest w2 [--env .cluster/cluster.env] [--concurrency 64] [--seconds 20] [--static /path] [--out DIR]\n       loadtest w3 --stream URL [--clients 1000] [--rate 50] [--seconds 20] [--pid API_PID] [--first-update-id N]\n       loadtest broadcast --recipients N --rate ALLOWED [--first-update-id N]\n       loadtest replay (--capture FILE[,FILE…] | --scenario FILE) [--speed X|max | --rate R | --ramp FROM:TO:SECS | --step R1,R2,…:SECS]\n                      [--max-connections 40] [--sse K] [--out DIR] [--first-update-id N] [--give-up-secs 60] [--env .cluster/cluster.env]"
        ),
    };
    let mut static_path = None;
    let (mut stream, mut clients, mut pid, mut recipients) = (None, 1000, None, 0);
    let mut env_file = ".cluster/cluster.env".to_owned();
    let (mut concurrency, mut seconds, mut rate, mut first_update_id) = (64, 20, None, 1);
    let (mut captures, mut scenario, mut arrival, mut first_update_id_set) = (Vec::new(), None, None, false);
    let (mut max_connections, mut subscribers, mut out, mut give_up_secs) = (40, 0, None, 60);
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--env" => env_file = value.clone(),
            "--concurrency" => concurrency = value.parse()?,
            "--seconds" => seconds = value.parse()?,
            "--rate" => rate = Some(value.parse()?),
            "--first-update-id" => {
                first_update_id = value.parse()?;
                first_update_id_set = true;
            }
            "--capture" => captures.extend(value.split(',').map(str::to_owned)),
            "--scenario" => scenario = Some(value.clone()),
            "--speed" if value == "max" => arrival = Some(botfleet::replay::Arrival::Closed),
            "--speed" => arrival = Some(botfleet::replay::Arrival::Capture { speed: value.parse()? }),
            "--ramp" | "--step" => arrival = Some(parse_shape(flag, value)?),
            "--max-connections" => max_connections = value.parse()?,
            "--sse" => subscribers = value.parse()?,
            "--out" => out = Some(value.clone()),
            "--give-up-secs" => give_up_secs = value.parse()?,
            "--static" => static_path = Some(value.clone()),
            "--stream" => stream = Some(value.clone()),
            "--clients" => clients = value.parse()?,
            "--pid" => pid = Some(value.parse()?),
            "--recipients" => recipients = value.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    if concurrency == 0 || concurrency > USERS {
        bail!("--concurrency must be 1 to {USERS}, so that every lane owns senders");
    }
    let text = std::fs::read_to_string(&env_file).with_context(|| format!("reading {env_file}"))?;
    let env =
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    Ok(Options {
        workload,
        env,
        static_path,
        stream,
        clients,
        pid,
        recipients,
        concurrency,
        seconds,
        rate,
        first_update_id,
        first_update_id_set,
        captures,
        scenario,
        arrival,
        max_connections,
        subscribers,
        out,
        give_up_secs,
    })
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
    let senders = Senders::for_lane(lane, options.concurrency);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (lane as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let mut result = LaneResult::default();
    let end = started + Duration::from_secs(options.seconds);
    let mut k = 0u64;
    let mut connection = None;
    loop {
        // Open loop: this lane's k-th arrival is due at a fixed time, whether or not we are late.
        let due = match options.rate {
            Some(rate) => {
                started
                    + Duration::from_secs_f64((k * options.concurrency as u64 + lane as u64) as f64 / rate)
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
    let end = started + Duration::from_secs(options.seconds);
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

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `loadtest chart --csv FILE --out FILE.svg`: a chart of a CSV file's columns (loadtest/soak).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [chart, csv_flag, csv, out_flag, out] = args.as_slice()
        && chart == "chart"
        && csv_flag == "--csv"
        && out_flag == "--out"
    {
        let text = std::fs::read_to_string(csv).with_context(|| format!("reading {csv}"))?;
        std::fs::write(out, chart::csv(&text)?)?;
        return Ok(());
    }
    let options = Arc::new(parse_args()?);
    let get =
        |key: &str| options.env.get(key).cloned().with_context(|| format!("{key} missing from the env file"));
    let webhook = reqwest::Url::parse(&get("BOTFLEET_WEBHOOK_URL")?)?;
    let target = Arc::new(Target {
        client: reqwest::Client::builder().pool_max_idle_per_host(options.concurrency).build()?,
        host: format!(
            "{}:{}",
            webhook.host_str().unwrap_or("127.0.0.1"),
            webhook.port_or_known_default().unwrap_or(80)
        ),
        path: webhook.path().to_owned(),
        secret: get("BOTFLEET_WEBHOOK_SECRET")?,
        next_id: AtomicI64::new(options.first_update_id),
    });
    if options.workload == Workload::Replay {
        use botfleet::replay::Arrival;
        if options.captures.is_empty() == options.scenario.is_none() {
            bail!("replay needs either --capture or --scenario");
        }
        let arrival = match (&options.arrival, options.rate) {
            (Some(arrival), None) => arrival.clone(),
            (None, Some(rate)) => Arrival::Constant { rate },
            (None, None) => Arrival::Capture { speed: 1.0 },
            (Some(_), Some(_)) => bail!("--rate goes with neither --speed, --ramp nor --step"),
        };
        let passed = replay::run(replay::Replay {
            env: options.env.clone(),
            captures: options.captures.clone(),
            scenario: options.scenario.clone(),
            arrival,
            max_connections: options.max_connections,
            first_update_id: options.first_update_id_set.then_some(options.first_update_id),
            subscribers: options.subscribers,
            out: options.out.clone(),
            give_up_after: Duration::from_secs(options.give_up_secs),
        })
        .await?;
        if !passed {
            bail!("the audit failed: see the summary above");
        }
        return Ok(());
    }
    if options.workload == Workload::Broadcast {
        let summary = broadcast::run(broadcast::Broadcast {
            webhook_url: get("BOTFLEET_WEBHOOK_URL")?,
            secret: get("BOTFLEET_WEBHOOK_SECRET")?,
            telegram_url: get("BOTFLEET_TELEGRAM_URL")?,
            recipients: options.recipients,
            allowed: options.rate.context("broadcast needs --rate: the messages per second allowed")?,
            update_id: options.first_update_id,
        })
        .await?;
        println!("{summary}");
        return Ok(());
    }
    if options.workload == Workload::W3 {
        let summary = w3::run(w3::W3 {
            clients: options.clients,
            stream_url: options
                .stream
                .clone()
                .context("w3 needs --stream http://<api node>/api/feed/stream")?,
            webhook_url: get("BOTFLEET_WEBHOOK_URL")?,
            secret: get("BOTFLEET_WEBHOOK_SECRET")?,
            rate: options.rate.unwrap_or(50.0),
            seconds: options.seconds,
            first_update_id: options.first_update_id,
            pid: options.pid,
        })
        .await?;
        println!("{summary}");
        return Ok(());
    }
    let started = Instant::now();
    let lanes: Vec<_> = match options.workload {
        Workload::W1 => (0..options.concurrency)
            .map(|n| tokio::spawn(lane(target.clone(), n, options.clone(), started)))
            .collect(),
        Workload::W3 | Workload::Broadcast | Workload::Replay => Vec::new(),
        Workload::W2 => {
            let base = get("BOTFLEET_URL")?;
            let reads = Arc::new(discover(&target.client, &base).await?);
            let started = Instant::now();
            (0..options.concurrency)
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
    if let Some(out) = &options.out {
        let series = chart::per_second(all.finished.iter().copied().zip(all.latencies.iter().copied()));
        std::fs::create_dir_all(out)?;
        std::fs::write(format!("{out}/chart.svg"), chart::svg(&series))?;
    }
    all.latencies.sort();
    let summary = json!({
        "workload": if options.workload == Workload::W1 { "W1" } else { "W2" },
        "static": options.static_path,
        "not_modified": all.not_modified,
        "mode": if options.rate.is_some() { "open" } else { "closed" },
        "concurrency": options.concurrency,
        "rate": options.rate,
        "seconds": elapsed,
        "sent": all.latencies.len(),
        "ok": all.ok,
        "non_2xx": all.non_2xx,
        "errors": all.errors,
        "throughput": all.ok as f64 / elapsed,
        "p50_ms": percentile(&all.latencies, 0.50),
        "p99_ms": percentile(&all.latencies, 0.99),
        "p999_ms": percentile(&all.latencies, 0.999),
        "first_update_id": options.first_update_id,
        "last_update_id": target.next_id.load(Ordering::Relaxed) - 1,
    });
    println!("{summary}");
    Ok(())
}
