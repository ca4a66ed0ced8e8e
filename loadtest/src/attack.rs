//! Hostile readers (`loadtest attack`, run by `loadtest/bench-hostile`): each lane sends one kind
//! of abuse from one client address, on a new connection per request as a flood would, for the
//! run's duration, and counts the answers by status.
//!
//! - `forged-cursors`: feed pages after cursors made up on the spot (a new one every request);
//! - `media`: one post's photo with a new query string every request (a cache buster);
//! - `resume`: stream connects with an old `Last-Event-ID`, closed once answered (a resume
//!   storm);
//! - `slow-heads`: connections that send half a request head and then a byte every 5 s, opened
//!   again a second after the server closes one (slowloris).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    ForgedCursors,
    Media,
    Resume,
    SlowHeads,
}

pub struct Attack {
    pub kind: Kind,
    /// host:port of Nginx or of a node.
    pub target: SocketAddr,
    pub from: IpAddr,
    pub lanes: usize,
    pub duration: Duration,
    /// The post whose photo `media` asks for.
    pub post: i64,
}

/// Answers by status (`closed` for a connection closed without one).
type Statuses = Arc<Mutex<BTreeMap<String, u64>>>;

pub async fn run(attack: Attack) -> anyhow::Result<serde_json::Value> {
    let attack = Arc::new(attack);
    let statuses = Statuses::default();
    let until = Instant::now() + attack.duration;
    let lanes: Vec<_> = (0..attack.lanes)
        .map(|lane| {
            let (attack, statuses) = (attack.clone(), statuses.clone());
            tokio::spawn(async move {
                match attack.kind {
                    Kind::SlowHeads => slow_head(&attack, &statuses, until).await,
                    _ => flood(&attack, lane, &statuses, until).await,
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await.context("an attack lane panicked")??;
    }
    let statuses = statuses.lock().map_err(|_| anyhow::anyhow!("a lane panicked"))?.clone();
    let requests: u64 = statuses.values().sum();
    Ok(json!({
        "attack": format!("{:?}", attack.kind),
        "seconds": attack.duration.as_secs(),
        "requests": requests,
        "statuses": statuses,
        "cpu_seconds": own_cpu_seconds(),
    }))
}

/// CPU time this process used so far (user and system), from `/proc/self/stat` (Linux counts
/// it in ticks of 1/100 s for user space).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn count(statuses: &Statuses, status: &str) {
    if let Ok(mut statuses) = statuses.lock() {
        *statuses.entry(status.to_owned()).or_default() += 1;
    }
}

async fn connect(attack: &Attack) -> std::io::Result<TcpStream> {
    let socket = if attack.from.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.bind(SocketAddr::new(attack.from, 0))?;
    socket.connect(attack.target).await
}

/// One request after another until `until`, each on its own connection.
async fn flood(attack: &Attack, lane: usize, statuses: &Statuses, until: Instant) -> anyhow::Result<()> {
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let unique = (lane as u64) << 40 | n;
        let request = match attack.kind {
            Kind::ForgedCursors => {
                format!(
                    "GET /api/feed?limit=100&cursor=djIuMTc5MDAwMDAwMDAwMDAwMC4{unique:x}.Zm9yZ2Vk HTTP/1.1\r\n"
                )
            }
            Kind::Media => format!("GET /api/media/{}?n={unique} HTTP/1.1\r\n", attack.post),
            Kind::Resume | Kind::SlowHeads => {
                "GET /api/feed/stream HTTP/1.1\r\nLast-Event-ID: 1-0\r\n".to_owned()
            }
        };
        let status = match connect(attack).await {
            Ok(mut stream) => status_of(&mut stream, &request).await,
            Err(_) => "refused".to_owned(),
        };
        count(statuses, &status);
        if status == "refused" {
            // Out of ports or refused at once: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Sends `request` (its first lines) and reads the answer's status code.
async fn status_of(stream: &mut TcpStream, request: &str) -> String {
    let request = format!("{request}Host: bench\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return "closed".to_owned();
    }
    let mut head = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut head)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&head[9..12]).into_owned(),
        Ok(Err(_)) => "closed".to_owned(),
        Err(_) => "timeout".to_owned(),
    }
}

/// Holds a connection with a request head that never ends, again whenever it is closed.
async fn slow_head(attack: &Attack, statuses: &Statuses, until: Instant) -> anyhow::Result<()> {
    loop {
        let Ok(mut stream) = connect(attack).await else {
            count(statuses, "refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut alive = stream.write_all(b"GET /api/feed HTTP/1.1\r\nHost: bench\r\n").await.is_ok();
        while alive && Instant::now() < until {
            let mut answer = [0u8; 12];
            // A byte every 5 s; whatever the server says (a 408, or closing) ends this one.
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer)).await {
                Err(_) => alive = stream.write_all(b"X").await.is_ok(),
                Ok(Ok(n)) if n >= 12 => {
                    count(statuses, &String::from_utf8_lossy(&answer[9..12]));
                    break;
                }
                Ok(_) => alive = false,
            }
        }
        if alive && Instant::now() >= until {
            count(statuses, "held to the end");
            return Ok(());
        }
        if Instant::now() >= until {
            return Ok(());
        }
        if !alive {
            count(statuses, "closed");
            // Then again a second later, as a patient attacker would (and not spinning the
            // cores the cluster shares).
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
