//! `loadtest w3`: live fan-out. K clients hold `GET /api/feed/stream` open on one API node while
//! posts are published through the webhook at a fixed rate; every client must receive every
//! post. Publish-to-delivery latency runs, as W3 defines it, from the webhook's 2xx answer to the
//! event's arrival at each client (an event that arrives before the answer counts as 0); the
//! latency from the moment the update is sent, which adds the worker's handling of the update,
//! is reported beside it.
//!
//! An event's arrival is the moment the kernel received its last byte at the client's socket
//! (`SO_TIMESTAMPNS`), not the moment the generator got round to reading it: the generator shares
//! the machine's cores with the node, and its own delays are not the node's. So that it costs the
//! node as little as a client on another machine would, the generator reads every stream from one
//! thread that polls without blocking and sleeps on a timer when nothing is ready: a node's write
//! then never has to wake a sleeping reader (on loopback the writer pays for the receiver's
//! wakeup: 12% of the node's samples when every client was a task waiting in epoll, 4% now).

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Latency histogram: 0.1 ms buckets up to 10 s.
const BUCKETS: usize = 100_000;
/// Clients connecting at the same moment (the listen backlog is finite).
const CONNECT_BATCH: usize = 500;
/// How long the reader sleeps when no stream has anything to read.
const IDLE: Duration = Duration::from_millis(1);

pub struct W3 {
    pub clients: usize,
    pub stream_url: String,
    pub webhook_url: String,
    pub secret: String,
    pub rate: f64,
    pub seconds: u64,
    pub first_update_id: i64,
    /// The serving process's pid, for its memory and CPU.
    pub pid: Option<u32>,
    /// Where posts are POSTed instead of the webhook (a baseline's publisher).
    pub publish: Option<String>,
}

/// The wall clock in µs since the Unix epoch: the clock of the kernel's receive timestamps.
fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

struct Shared {
    /// When each post was sent, in [`now_us`] (0: not yet), by its index in the run.
    sent: Vec<AtomicU64>,
    /// When each post's 2xx answer arrived, likewise.
    answered: Vec<AtomicU64>,
    first_update_id: i64,
    from_answer: Latencies,
    from_send: Latencies,
    /// From the answer to the moment the generator read the event: the arrival plus the
    /// generator's own delay, for comparison.
    read_from_answer: Latencies,
    received: AtomicU64,
    /// How many events the run expects; the last one to arrive wakes `all_received`.
    expected: AtomicU64,
    all_received: tokio::sync::Notify,
}

impl Shared {
    /// An event of the post of `update_id` arrived at `arrived` and was read at `read` (both
    /// [`now_us`]); an event the kernel did not stamp counts as arrived when it was read.
    fn record(&self, update_id: i64, arrived: Option<u64>, read: u64) {
        let arrived = arrived.unwrap_or(read);
        let Some(k) = usize::try_from(update_id - self.first_update_id).ok().filter(|k| *k < self.sent.len())
        else {
            return;
        };
        let sent = self.sent[k].load(Ordering::Relaxed);
        if sent == 0 {
            return;
        }
        self.from_send.record(arrived.saturating_sub(sent));
        // Not answered yet: the event came first.
        let answered = self.answered[k].load(Ordering::Relaxed);
        let since_answer = |at: u64| if answered == 0 { 0 } else { at.saturating_sub(answered) };
        self.from_answer.record(since_answer(arrived));
        self.read_from_answer.record(since_answer(read));
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

/// The reader's buffers, reused for every read.
struct Scratch {
    chunk: Vec<u8>,
    control: Vec<u8>,
}

impl Scratch {
    /// Reads of at most `chunk` bytes, with room for a receive timestamp.
    fn new(chunk: usize) -> Self {
        Self { chunk: vec![0; chunk], control: nix::cmsg_space!(nix::sys::time::TimeSpec) }
    }
}

/// One client's stream, read by [`read_streams`].
struct Client {
    stream: mio::net::TcpStream,
    /// What arrived and is not yet a whole event.
    buffer: Vec<u8>,
    open: bool,
}

impl Client {
    /// Reads everything the socket holds, then records every whole event in the buffer as
    /// arrived when the last byte read did (an event read together with later ones is counted
    /// late, never early): `record(update id, arrived, read)`, in [`now_us`]. `arrived` is
    /// `None` when the kernel stamped nothing: it starts stamping a moment after the first
    /// socket asks it to (the switch is deferred), so the first bytes may come unstamped.
    fn read(&mut self, scratch: &mut Scratch, mut record: impl FnMut(i64, Option<u64>, u64)) {
        let mut arrived = None;
        loop {
            let mut into = [IoSliceMut::new(&mut scratch.chunk)];
            let received = nix::sys::socket::recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut into,
                Some(&mut scratch.control),
                nix::sys::socket::MsgFlags::empty(),
            );
            let (bytes, stamp) = match received {
                Ok(message) => {
                    let stamp = message.cmsgs().ok().and_then(|mut all| {
                        all.find_map(|c| match c {
                            nix::sys::socket::ControlMessageOwned::ScmTimestampns(t) => {
                                Some(t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
                            }
                            _ => None,
                        })
                    });
                    (message.bytes, stamp)
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => (0, None),
            };
            if bytes == 0 {
                self.open = false;
                break;
            }
            self.buffer.extend_from_slice(&scratch.chunk[..bytes]);
            arrived = stamp.or(arrived);
            // A short read emptied the socket, and what arrives next is a new edge: no need
            // for the read that would say so.
            if bytes < scratch.chunk.len() {
                break;
            }
        }
        let read = now_us();
        // Events end with a blank line. Only the post's id is needed, from its text "w3-<id> …".
        let mut start = 0;
        while let Some(end) = find(&self.buffer[start..], b"\n\n") {
            if let Some(id) = post_id(&self.buffer[start..start + end]) {
                record(id, arrived, read);
            }
            start += end + 2;
        }
        self.buffer.drain(..start);
    }
}

/// Reads every stream until `stop`, on the calling thread: polls without blocking, and sleeps
/// [`IDLE`] whenever nothing is ready.
fn read_streams(mut clients: Vec<Client>, shared: &Shared, stop: &AtomicBool) -> std::io::Result<()> {
    let mut poll = mio::Poll::new()?;
    let mut scratch = Scratch::new(16 * 1024);
    let mut record = |id, arrived, read| shared.record(id, arrived, read);
    for (k, client) in clients.iter_mut().enumerate() {
        poll.registry().register(&mut client.stream, mio::Token(k), mio::Interest::READABLE)?;
        // Whatever came with the answer's head, and whatever arrived before the registration
        // (readiness is reported on edges only).
        client.read(&mut scratch, &mut record);
    }
    let mut events = mio::Events::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::ZERO))?;
        if events.is_empty() {
            // Not a wait for readiness but the poll's interval: blocking in epoll until a
            // stream is readable is what would make every write of the node wake this thread.
            // An event's latency does not include this sleep (its arrival is the kernel's
            // stamp); only the reading does.
            std::thread::sleep(IDLE);
        }
        for event in &events {
            let client = &mut clients[event.token().0];
            if client.open {
                client.read(&mut scratch, &mut record);
                if !client.open {
                    poll.registry().deregister(&mut client.stream)?;
                }
            }
        }
    }
    Ok(())
}

/// Opens one client's stream on a bare TCP connection (an HTTP client library per event would
/// cost the driver more than the node it measures), with kernel receive timestamps.
async fn connect(addr: &str, path: &str) -> anyhow::Result<Client> {
    let Opened { stream, buffer, .. } = open(addr, path, None).await?;
    let stream = mio::net::TcpStream::from_std(stream.into_std()?);
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::ReceiveTimestampns, &true)?;
    Ok(Client { stream, buffer, open: true })
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

/// Where `needle` first starts in `haystack` (SIMD, on the generator's hot path).
pub(crate) use memchr::memmem::find;

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
        first_update_id: w3.first_update_id,
        from_answer: Latencies::new(),
        from_send: Latencies::new(),
        read_from_answer: Latencies::new(),
        received: AtomicU64::new(0),
        expected: AtomicU64::new(u64::MAX),
        all_received: tokio::sync::Notify::new(),
    });
    let before = w3.pid.and_then(proc_stat);
    let url = reqwest::Url::parse(&w3.stream_url)?;
    let addr: Arc<str> =
        format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port_or_known_default().unwrap_or(80))
            .into();
    let path: Arc<str> = url.path().into();
    let mut clients = Vec::with_capacity(w3.clients);
    for batch in 0..w3.clients.div_ceil(CONNECT_BATCH) {
        let in_batch = CONNECT_BATCH.min(w3.clients - batch * CONNECT_BATCH);
        let connecting: Vec<_> = (0..in_batch)
            .map(|_| {
                let (addr, path) = (addr.clone(), path.clone());
                tokio::spawn(async move { connect(&addr, &path).await })
            })
            .collect();
        // The whole batch is in before the next one starts.
        for task in connecting {
            let failed = match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(client))) => {
                    clients.push(client);
                    continue;
                }
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "no answer within 30 s".to_owned(),
            };
            bail!("only {} clients connected; the next one: {failed}", clients.len());
        }
    }
    let connected_clients = clients.len() as u64;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || read_streams(clients, &shared, &stop))
    };
    let connected = w3.pid.and_then(proc_stat);
    let generator_connected = proc_stat(std::process::id());

    let publisher = reqwest::Client::new();
    let started = Instant::now();
    let mut sending = Vec::with_capacity(posts as usize);
    for k in 0..posts {
        let due = started + Duration::from_secs_f64(k as f64 / w3.rate);
        tokio::time::sleep_until(due.into()).await;
        let id = w3.first_update_id + k;
        let user = 1 + k % 1000;
        let text = format!("w3-{id} a post for every open stream");
        let request = match &w3.publish {
            // The baseline's event carries this body, so the mark is found as in a post.
            Some(url) => publisher.post(url).body(json!({ "text": text }).to_string()),
            None => {
                publisher.post(&w3.webhook_url).header("x-telegram-bot-api-secret-token", &w3.secret).body(
                    json!({
                        "update_id": id,
                        "message": {
                            "message_id": id, "date": 1_790_000_000, "text": text,
                            "chat": { "id": user, "type": "private", "first_name": "W3" },
                            "from": { "id": user, "is_bot": false, "first_name": "W3" },
                        }
                    })
                    .to_string(),
                )
            }
        };
        // Each post goes out on time, whatever the ones before it still wait for: a publisher
        // that answers only after its fan-out (Nchan's) must not slow the rate down.
        let shared = shared.clone();
        sending.push(tokio::spawn(async move {
            shared.sent[k as usize].store(now_us(), Ordering::Relaxed);
            let response = request.header("content-type", "application/json").send().await;
            let ok = response.is_ok_and(|r| r.status().is_success());
            if ok {
                shared.answered[k as usize].store(now_us(), Ordering::Relaxed);
            }
            ok
        }));
    }
    let mut failed = 0;
    for sent in sending {
        if !sent.await.unwrap_or(false) {
            failed += 1;
        }
    }
    let expected = (posts - failed) as u64 * connected_clients;
    shared.received_all(expected, Duration::from_secs(10)).await;
    let after = w3.pid.and_then(proc_stat);
    let generator_after = proc_stat(std::process::id());
    stop.store(true, Ordering::Relaxed);
    match reader.join() {
        Ok(read) => read?,
        Err(_) => bail!("the stream reader panicked"),
    }
    let received = shared.received.load(Ordering::Relaxed);
    let rss_per_client_kib = match (before, connected) {
        (Some((a, _)), Some((b, _))) if connected_clients > 0 => {
            json!((b.saturating_sub(a)) as f64 / connected_clients as f64)
        }
        _ => Value::Null,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cores = |from: Option<(u64, f64)>, to: Option<(u64, f64)>| match (from, to) {
        (Some((_, a)), Some((_, b))) => json!((b - a) / elapsed),
        _ => Value::Null,
    };
    let cpu_us_per_event = match (connected, after) {
        (Some((_, a)), Some((_, b))) if received > 0 => json!((b - a) * 1e6 / received as f64),
        _ => Value::Null,
    };
    Ok(json!({
        "workload": "W3",
        "clients": connected_clients,
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
        "p99_read_ms": shared.read_from_answer.percentile(0.99),
        "rss_per_client_kib": rss_per_client_kib,
        "api_cpu_cores": cores(connected, after),
        "cpu_us_per_event": cpu_us_per_event,
        "generator_cpu_cores": cores(generator_connected, generator_after),
    }))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn find_finds_the_first_whole_needle() {
        assert_eq!(find(b"ab\n\ncd\n\n", b"\n\n"), Some(2));
        assert_eq!(find(b"a\nb\n\n", b"\n\n"), Some(3));
        assert_eq!(find(b"\n\n\n", b"\n\n"), Some(0));
        assert_eq!(find(b"abc\n", b"\n\n"), None);
        assert_eq!(find(b"", b"\n\n"), None);
        assert_eq!(find(b"xx\"text\":\"w3-1", b"\"text\":\"w3-"), Some(2));
    }

    /// The arrival must be the kernel's stamp: taken before the socket was seen readable, so a
    /// generator that used the moment of its read instead would fail.
    #[test]
    fn an_event_arrives_when_the_kernel_received_it_not_when_it_was_read() -> anyhow::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let connected = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (mut node, _) = listener.accept()?;
        connected.set_nonblocking(true)?;
        let stream = mio::net::TcpStream::from_std(connected);
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::ReceiveTimestampns, &true)?;
        let mut client = Client { stream, buffer: Vec::new(), open: true };
        let mut poll = mio::Poll::new()?;
        poll.registry().register(&mut client.stream, mio::Token(0), mio::Interest::READABLE)?;
        let mut scratch = Scratch::new(16);
        let mut events = mio::Events::with_capacity(1);
        // (update id, arrived, read) per event recorded.
        type Recorded = Vec<(i64, Option<u64>, u64)>;
        let mut deliver = |bytes: &[u8]| -> anyhow::Result<(u64, u64, Recorded)> {
            let sent = now_us();
            node.write_all(bytes)?;
            poll.poll(&mut events, Some(Duration::from_secs(10)))?;
            let readable = now_us();
            let mut recorded = Vec::new();
            client.read(&mut scratch, |id, arrived, read| recorded.push((id, arrived, read)));
            Ok((sent, readable, recorded))
        };

        // The kernel turns stamping on a moment after this first socket asked: events go until
        // one comes stamped.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, recorded) = deliver(b"id: 1-0\nevent: post\ndata: {\"text\":\"w3-1 first\"}\n\n")?;
            if let [(1, Some(_), _)] = recorded[..] {
                break;
            }
            assert!(Instant::now() < deadline, "no event came stamped by the kernel: {recorded:?}");
        }
        // An event's head, then its end with a heartbeat and half of the next event, each in
        // more bytes than one read takes.
        let (_, _, recorded) = deliver(b"id: 1-1\nevent: post\ndata: {\"te")?;
        assert_eq!(recorded, [], "nothing whole arrived yet");
        let (sent, readable, recorded) =
            deliver(b"xt\":\"w3-7 seven\"}\n\n: heartbeat\n\nid: 1-2\nevent: post\ndata: {\"text\":\"w3-8")?;
        let [(7, Some(arrived), read)] = recorded[..] else {
            panic!("expected event 7 alone, stamped, got {recorded:?}")
        };
        assert!(
            sent <= arrived && arrived <= readable && readable <= read,
            "{sent} {arrived} {readable} {read}"
        );
        let (sent, readable, recorded) = deliver(b" eight\"}\n\n")?;
        let [(8, Some(arrived), _)] = recorded[..] else {
            panic!("expected event 8 alone, stamped, got {recorded:?}")
        };
        assert!(sent <= arrived && arrived <= readable, "{sent} {arrived} {readable}");

        drop(node);
        poll.poll(&mut events, Some(Duration::from_secs(10)))?;
        client.read(&mut scratch, |id, _, _| panic!("nothing more was sent, yet {id} was recorded"));
        assert!(!client.open, "the node closed the stream");
        Ok(())
    }

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
            dechunk(&mut raw, &mut out);
            raw.extend_from_slice(&wire[cut..]);
            assert!(!dechunk(&mut raw, &mut out), "the last chunk ends it");
            assert_eq!(out, body, "cut at {cut}");
        }
    }
}
