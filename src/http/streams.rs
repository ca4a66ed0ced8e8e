//! Long-lived streams served without hyper.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for each connection as long as it
//! lives. For a Server-Sent Events stream, which reads one request and then only writes small
//! events, those buffers were most of what a client cost (W3 in `loadtest/README.md`), and
//! hyper's framing of every event was a good part of the fan-out's CPU.
//!
//! So a connection whose first request is a `GET` of one of the stream paths is served here. Its
//! request is read into a small buffer and answered by the same router as every other request
//! (same routes, middleware and limits), and the answer's body is written straight to the
//! socket, delimited by closing the connection (`Connection: close`, as HTTP/1.1 allows; an
//! `EventSource` reconnects anyway). Every other connection goes to hyper, with the bytes read
//! while looking at its first request put back in front of the rest ([`Rewind`]), so a stream
//! asked for on a connection that served other requests first is served by hyper, as before.
//!
//! Every connection's first head passes here, so here is where slow heads (slowloris) are
//! bounded: 16 on their way per address (proxies in front excepted), 8,192 in all, and 2 s
//! instead of 30 to send one once 256 are on their way. A stream client that takes 30 s to read
//! a write is dropped.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, Method, Uri, Version, header};
use axum::serve::IncomingStream;
use futures_util::stream::FuturesUnordered;
use futures_util::{StreamExt, future::BoxFuture};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::settings::Network;

/// A request head longer than this goes to hyper, which has its own limits and errors.
const MAX_HEAD: usize = 16 * 1024;
/// How long a new connection may take to send its first request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Past this many heads on their way, a new connection gets `CROWDED_HEAD_TIMEOUT` instead: a
/// browser sends its head at once, a slow-head flood (slowloris) trickles it.
const CROWDED: usize = 256;
const CROWDED_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Heads on their way at most: past it new connections are closed at once.
const MAX_LOOKING: usize = 8192;
/// Heads on their way from one address at most (proxies in front excepted).
pub const MAX_HEADS_PER_ADDRESS: usize = 16;
/// How long one write to a client may take: a client that stops reading is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The address a request came from (`axum::extract::ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

macro_rules! peer_of {
    ($listener:ty) => {
        impl Connected<IncomingStream<'_, $listener>> for Peer {
            fn connect_info(stream: IncomingStream<'_, $listener>) -> Self {
                Self(*stream.remote_addr())
            }
        }
    };
}
peer_of!(TcpListener);
peer_of!(Sorting);

/// Which requests are streams to serve without hyper, and who may open many connections at once.
pub struct LeanStreams {
    pub paths: &'static [&'static str],
    /// Proxies in front (Nginx), which may have any number of request heads on their way.
    pub trusted_proxies: Vec<Network>,
    /// Counts connections refused for having too many request heads on their way.
    pub refused: prometheus::IntCounter,
}

/// A connection for hyper, if its first request was not a stream.
type Looked = Option<(Rewind, SocketAddr)>;

/// A listener that serves the connections opening with a stream request itself and hands every
/// other connection to `axum::serve`.
pub struct Sorting {
    listener: TcpListener,
    router: Router,
    streams: LeanStreams,
    tasks: TaskTracker,
    /// Connections whose first request head is still arriving, and how many from each address.
    looking: FuturesUnordered<BoxFuture<'static, (Looked, IpAddr)>>,
    per_address: HashMap<IpAddr, usize>,
}

impl Sorting {
    /// Streams are served as tasks of `tasks`, so that a drain waits for them to end.
    pub fn new(listener: TcpListener, router: Router, streams: LeanStreams, tasks: TaskTracker) -> Self {
        let (looking, per_address) = (FuturesUnordered::new(), HashMap::new());
        Self { listener, router, streams, tasks, looking, per_address }
    }

    /// Starts reading a new connection's head, unless its address (or everyone) has too many
    /// on their way.
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr) {
        let ip = peer.ip().to_canonical();
        let trusted = self.streams.trusted_proxies.iter().any(|proxy| proxy.contains(ip));
        let from_peer = self.per_address.get(&ip).copied().unwrap_or(0);
        if self.looking.len() >= MAX_LOOKING || !trusted && from_peer >= MAX_HEADS_PER_ADDRESS {
            self.streams.refused.inc();
            return;
        }
        *self.per_address.entry(ip).or_default() += 1;
        let timeout = if self.looking.len() >= CROWDED { CROWDED_HEAD_TIMEOUT } else { HEAD_TIMEOUT };
        let (router, tasks, paths) = (self.router.clone(), self.tasks.clone(), self.streams.paths);
        let looked = look(stream, peer, router, paths, tasks, timeout);
        self.looking.push(Box::pin(async move { (looked.await, ip) }));
    }

    fn looked(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_address.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&ip);
            }
        }
    }
}

impl axum::serve::Listener for Sorting {
    type Io = Rewind;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Rewind, SocketAddr) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => self.admit(stream, peer),
                    Err(e) => {
                        // Out of file descriptors, most likely: let some connections end first.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some((looked, ip)) = self.looking.next(), if !self.looking.is_empty() => {
                    self.looked(ip);
                    if let Some(for_hyper) = looked {
                        return for_hyper;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Reads a connection's first request head: a stream request is served here, in a task of its
/// own; anything else is returned for hyper with the bytes read so far.
async fn look(
    mut stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    paths: &'static [&'static str],
    tasks: TaskTracker,
    timeout: Duration,
) -> Looked {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        loop {
            if head.len() == head.capacity() {
                // Doubling: a long head takes a few reads, not one per 64 bytes.
                head.reserve(head.len());
            }
            match stream.read_buf(&mut head).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            match stream_request(&head, paths) {
                Head::Partial if head.len() < MAX_HEAD => {}
                Head::Partial => return Some(Head::Other),
                sorted => return Some(sorted),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Some(Head::Stream(mut request))) => {
            request.extensions_mut().insert(ConnectInfo(Peer(peer)));
            tasks.spawn(answer(stream, router, request));
            None
        }
        Ok(Some(_)) => Some((Rewind { head, read: 0, stream }, peer)),
        // Closed, failed or silent before a whole head arrived: nothing to answer.
        Ok(None) | Err(_) => None,
    }
}

enum Head {
    Partial,
    /// A complete `GET` of a stream path, with nothing after it.
    Stream(Box<Request>),
    Other,
}

fn stream_request(head: &[u8], paths: &[&str]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let length = match parsed.parse(head) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Head::Partial,
        Err(_) => return Head::Other,
    };
    let (Some("GET"), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version) else {
        return Head::Other;
    };
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if length != head.len() || !paths.contains(&path) {
        return Head::Other;
    }
    let Ok(uri) = target.parse::<Uri>() else { return Head::Other };
    let mut request = Request::new(Body::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = if minor == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return Head::Other;
        };
        // A GET with a body is left to hyper, which knows how to read or refuse it.
        if name == header::CONTENT_LENGTH && h.value != b"0" || name == header::TRANSFER_ENCODING {
            return Head::Other;
        }
        request.headers_mut().append(name, value);
    }
    Head::Stream(Box::new(request))
}

/// Answers a stream request through the router and writes the answer until its body ends or
/// the client goes away, then closes the connection.
async fn answer(mut stream: TcpStream, router: Router, request: Box<Request>) {
    // Events are small and must not wait for the previous one's acknowledgement.
    let _ = stream.set_nodelay(true);
    let Ok(response) = Box::pin(router.oneshot(*request)).await;
    let (parts, body) = response.into_parts();
    let mut head =
        format!("HTTP/1.1 {} {}\r\n", parts.status.as_str(), parts.status.canonical_reason().unwrap_or(""))
            .into_bytes();
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(length) = body.size_hint().exact()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    head.extend_from_slice(format!("date: {date}\r\nconnection: close\r\n\r\n").as_bytes());
    if write(&mut stream, &head).await.is_err() {
        return;
    }
    drop(head);
    let mut data = body.into_data_stream();
    // Whatever is ready when the task gets to run goes out in one write: a client whose task
    // ran late (thousands of streams woken by one post) catches up in one segment, not several.
    let mut ready = Vec::new();
    let mut ended = false;
    while !ended {
        poll_fn(|cx| {
            loop {
                match data.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(bytes))) => ready.push(bytes),
                    Poll::Ready(_) => {
                        ended = true;
                        return Poll::Ready(());
                    }
                    Poll::Pending if !ready.is_empty() => return Poll::Ready(()),
                    Poll::Pending if peer_gone(&stream, cx) => {
                        ended = true;
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        let written = match ready.as_slice() {
            [] => Ok(()),
            [bytes] => write(&mut stream, bytes).await,
            many => write(&mut stream, &many.concat()).await,
        };
        if written.is_err() {
            return;
        }
        ready.clear();
    }
    let _ = stream.shutdown().await;
}

/// Writes `bytes` whole, unless the client takes longer than `WRITE_TIMEOUT` to read them.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Whether the client closed its side (or the connection broke). Whatever else it sends once
/// its request is in is read and dropped, as the answer is the connection's last.
fn peer_gone(stream: &TcpStream, cx: &mut Context<'_>) -> bool {
    loop {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => match stream.try_read(&mut [0; 64]) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return true,
            },
        }
    }
}

/// A connection for hyper: the bytes already read from it come first.
pub struct Rewind {
    head: Vec<u8>,
    read: usize,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.read);
            buf.put_slice(&this.head[this.read..this.read + n]);
            this.read += n;
            if this.read == this.head.len() {
                this.head = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: &[&str] = &["/api/feed/stream"];

    fn sorted(head: &str) -> &'static str {
        match stream_request(head.as_bytes(), PATHS) {
            Head::Partial => "partial",
            Head::Stream(_) => "stream",
            Head::Other => "other",
        }
    }

    #[test]
    fn only_a_whole_bodiless_get_of_a_stream_path_is_a_stream() {
        let get = "GET /api/feed/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1-0\r\n\r\n";
        assert_eq!(sorted(get), "stream");
        assert_eq!(sorted("GET /api/feed/stream?x=1 HTTP/1.0\r\n\r\n"), "stream");
        assert_eq!(sorted(&get[..get.len() - 2]), "partial");
        assert_eq!(sorted("GET /api/feed HTTP/1.1\r\nHost: x\r\n\r\n"), "other");
        assert_eq!(sorted("GET /api/feed/stream/ HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(sorted("POST /api/feed/stream HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(sorted("HEAD /api/feed/stream HTTP/1.1\r\n\r\n"), "other");
        assert_eq!(sorted("GET /api/feed/stream HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"), "other");
        assert_eq!(sorted("GET /api/feed/stream HTTP/1.1\r\nContent-Length: 3\r\n\r\n"), "other");
        assert_eq!(sorted("GET /api/feed/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), "other");
        // A second request pipelined behind the first: hyper serves them in turn.
        assert_eq!(sorted(&format!("{get}{get}")), "other");
        assert_eq!(sorted("GET /api/feed/stream HTTP/1.1\r\nBad Header\r\n\r\n"), "other");
        assert_eq!(sorted("\x16\x03\x01 not http at all\r\n\r\n"), "other");
    }
}
