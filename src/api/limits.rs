//! What one client address may ask of a node reached without Nginx in front: the same limits
//! Nginx enforces (`deploy/nginx/render`), so that a node exposed directly still holds. Requests
//! and streams from `BOTFLEET_TRUSTED_PROXIES` are not limited here: those proxies limit by the
//! addresses behind them, which only they know.
//!
//! Addresses are counted one by one for IPv4 and by /64 for IPv6 (what one host gets). The
//! tables are bounded: past [`MAX_TRACKED`] addresses, those back at their full allowance are
//! forgotten, and while none is, new addresses are refused rather than tracked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::error::ApiError;
use crate::http::Peer;
use crate::metrics::Metrics;
use crate::settings::AddressLimits;

/// Addresses each table tracks at most (about 64 bytes each).
pub const MAX_TRACKED: usize = 100_000;
/// Stream connects per second per address, sustained, and in a burst: an `EventSource`
/// reconnects every few seconds; a resume storm is thousands a second.
pub const STREAM_CONNECT_RATE: f64 = 1.0;
pub const STREAM_CONNECT_BURST: f64 = 20.0;

pub struct Limits {
    settings: AddressLimits,
    metrics: Arc<Metrics>,
    /// Requests of this path are stream connects.
    stream_path: &'static str,
    requests: Buckets,
    connects: Buckets,
    streams: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Limits {
    pub fn new(settings: AddressLimits, metrics: Arc<Metrics>, stream_path: &'static str) -> Self {
        Self {
            metrics,
            stream_path,
            requests: Buckets::new(settings.rate.into(), settings.burst.into()),
            connects: Buckets::new(STREAM_CONNECT_RATE, STREAM_CONNECT_BURST),
            streams: Arc::default(),
            settings,
        }
    }

    /// The address a peer is counted as, or `None` for a trusted proxy.
    pub fn client(&self, peer: IpAddr) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if self.settings.trusted_proxies.iter().any(|proxy| proxy.contains(peer)) {
            return None;
        }
        Some(match peer {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
            v4 => v4,
        })
    }

    /// Takes one of `client`'s stream slots, held until the guard drops.
    fn open_stream(&self, client: IpAddr) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.len() >= MAX_TRACKED && !streams.contains_key(&client) {
            return None;
        }
        let open = streams.entry(client).or_default();
        if *open >= self.settings.streams {
            return None;
        }
        *open += 1;
        Some(StreamSlot { client, streams: self.streams.clone() })
    }
}

/// One open stream of an address.
struct StreamSlot {
    client: IpAddr,
    streams: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = streams.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                streams.remove(&self.client);
            }
        }
    }
}

/// Token buckets, one per address.
struct Buckets {
    rate: f64,
    burst: f64,
    /// Address → tokens left and when they were counted.
    table: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Buckets {
    fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst: burst.max(1.0), table: Mutex::default() }
    }

    /// Takes a token of `client`'s, or says how long until there is one.
    fn take(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let refill = |(tokens, at): (f64, Instant)| {
            (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst)
        };
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_TRACKED && !table.contains_key(&client) {
            table.retain(|_, bucket| refill(*bucket) < self.burst);
            if table.len() >= MAX_TRACKED {
                return Err(Duration::from_secs(1));
            }
        }
        let bucket = table.entry(client).or_insert((self.burst, now));
        let tokens = refill(*bucket);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            let wait = if self.rate > 0.0 { (1.0 - tokens) / self.rate } else { 60.0 };
            return Err(Duration::from_secs_f64(wait));
        }
        *bucket = (tokens - 1.0, now);
        Ok(())
    }
}

/// The middleware: 429 with `Retry-After` past a limit. A stream also holds one of its
/// address's stream slots for as long as its body lives.
pub async fn enforce(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<Peer>>().map(|info| info.0.0.ip());
    let Some(client) = peer.and_then(|peer| limits.client(peer)) else {
        return next.run(request).await;
    };
    let refused = |limit: &str, wait: Duration| {
        limits.metrics.limited.with_label_values(&[limit]).inc();
        ApiError::TooMany(wait.as_secs().max(1)).into_response()
    };
    if request.uri().path() != limits.stream_path {
        return match limits.requests.take(client) {
            Ok(()) => next.run(request).await,
            Err(wait) => refused("requests", wait),
        };
    }
    if let Err(wait) = limits.connects.take(client) {
        return refused("stream_connects", wait);
    }
    let Some(slot) = limits.open_stream(client) else {
        return refused("streams", Duration::from_secs(10));
    };
    let response = next.run(request).await;
    response.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let _held = &slot;
            chunk
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &str) -> Limits {
        let trusted_proxies =
            trusted.split(',').filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
        let metrics = Arc::new(Metrics::new("api").unwrap());
        Limits::new(AddressLimits { trusted_proxies, rate: 2, burst: 3, streams: 2 }, metrics, "/stream")
    }

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let limits = limits("");
        let (one, two): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for _ in 0..3 {
            assert!(limits.requests.take(one).is_ok());
        }
        let wait = limits.requests.take(one).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
        assert!(limits.requests.take(two).is_ok(), "another address has its own allowance");
    }

    #[test]
    fn streams_per_address_are_counted_while_held() {
        let limits = limits("");
        let client = limits.client("192.0.2.1".parse().unwrap()).unwrap();
        let (first, _second) = (limits.open_stream(client).unwrap(), limits.open_stream(client).unwrap());
        assert!(limits.open_stream(client).is_none(), "a third stream is refused");
        drop(first);
        assert!(limits.open_stream(client).is_some(), "a closed stream frees its slot");
    }

    #[test]
    fn trusted_proxies_are_not_limited_and_ipv6_counts_by_64() {
        let limits = limits("127.0.0.1,10.0.0.0/8");
        assert_eq!(limits.client("127.0.0.1".parse().unwrap()), None);
        assert_eq!(limits.client("10.2.3.4".parse().unwrap()), None);
        assert_eq!(limits.client("::ffff:10.2.3.4".parse().unwrap()), None, "a v4 peer on a v6 socket");
        let host = |ip: &str| limits.client(ip.parse().unwrap()).unwrap();
        assert_eq!(host("2001:db8::1"), host("2001:db8::ffff:1"));
        assert_ne!(host("2001:db8::1"), host("2001:db8:0:1::1"));
        assert_eq!(host("192.0.2.7"), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_who_is_back_to_full() {
        let buckets = Buckets::new(1.0, 1.0);
        let address = |i: usize| IpAddr::V4(std::net::Ipv4Addr::from(i as u32));
        for i in 0..MAX_TRACKED {
            buckets.table.lock().unwrap().insert(address(i), (0.0, Instant::now()));
        }
        assert!(buckets.take(address(MAX_TRACKED)).is_err(), "full of empty buckets: a newcomer waits");
        // One address has been quiet for two seconds: back to full, it is forgotten.
        buckets.table.lock().unwrap().insert(address(7), (0.0, Instant::now() - Duration::from_secs(2)));
        assert!(buckets.take(address(MAX_TRACKED)).is_ok());
        let table = buckets.table.lock().unwrap();
        assert_eq!((table.len(), table.contains_key(&address(7))), (MAX_TRACKED, false));
    }
}
