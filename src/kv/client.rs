//! Connections to Redis, one server or a Redis Cluster, as its URL says.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use deadpool_redis::{Manager, Runtime};
use redis::RedisResult;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;

use crate::settings::Secret;

/// How long a request may wait for a Redis connection before Redis counts as unavailable.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

pub type PoolError = deadpool_redis::PoolError;

/// A connection every task of an update shares: commands of concurrent tasks are pipelined on
/// it. Either one server's multiplexed connection, or a Redis Cluster's (one multiplexed
/// connection per node, each command sent to the node of its keys' slot).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A Redis, as a URL describes it (TLS included, see [`crate::tls`]): one server, or a Redis
/// Cluster when the URL says `cluster=true`. A cluster's seed nodes are the URL's host and every
/// `addr=host:port` of its query (go-redis' convention); the client finds the others from them.
#[derive(Clone)]
pub enum Client {
    Single(Box<redis::Client>),
    Cluster(Arc<Cluster>),
}

pub struct Cluster {
    client: ClusterClient,
    /// The URL: every node is reached with its credentials and TLS parameters.
    url: url::Url,
    /// The seed nodes: subscriptions go to one of them (a `PUBLISH` reaches every node).
    nodes: Vec<redis::Client>,
    /// The seed a subscription tries first: the next one after each failure.
    next: AtomicUsize,
}

impl Client {
    pub fn open(url: &Secret) -> anyhow::Result<Self> {
        let url = url.expose();
        let parsed = url::Url::parse(url).context("not a URL")?;
        let param = |key: &'static str| {
            parsed.query_pairs().filter(move |(k, _)| k == key).map(|(_, v)| v.into_owned())
        };
        match param("cluster").last().as_deref() {
            None | Some("false") => return Ok(Self::Single(Box::new(crate::tls::redis(url)?))),
            Some("true") => {}
            Some(other) => bail!("cluster={other}: true or false"),
        }
        let mut nodes = vec![crate::tls::redis(url)?];
        for addr in param("addr") {
            let (host, port) = addr.rsplit_once(':').with_context(|| format!("addr={addr}: host:port"))?;
            let port = port.parse().with_context(|| format!("addr={addr}: not a port"))?;
            nodes.push(node(&parsed, host, port).with_context(|| format!("addr={addr}"))?);
        }
        let mut builder =
            ClusterClientBuilder::new(nodes.iter().map(|node| node.get_connection_info().clone()))
                .connection_timeout(POOL_TIMEOUT)
                .response_timeout(POOL_TIMEOUT);
        if let Some(certificates) = crate::tls::redis_certificates(url)? {
            builder = builder.certs(certificates);
        }
        let client = builder.build()?;
        Ok(Self::Cluster(Arc::new(Cluster { client, url: parsed, nodes, next: AtomicUsize::new(0) })))
    }

    /// A connection of its own, for blocking reads that would hold up a shared one: they may
    /// take up to `timeout`.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        Ok(match self {
            Self::Single(client) => {
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(timeout));
                Conn::Single(client.get_multiplexed_async_connection_with_config(&config).await?)
            }
            Self::Cluster(cluster) => {
                let config = ClusterConfig::new().set_response_timeout(timeout);
                Conn::Cluster(cluster.client.get_async_connection_with_config(config).await?)
            }
        })
    }

    /// A subscriber's connection. In a cluster, a `PUBLISH` reaches every node: any node that
    /// answers will do, tried in turn after a failure (its node may be the one that failed).
    pub async fn pubsub(&self) -> RedisResult<PubSub> {
        match self {
            Self::Single(client) => client.get_async_pubsub().await,
            Self::Cluster(cluster) => {
                let (nodes, first) = (&cluster.nodes, cluster.next.load(Ordering::Relaxed));
                let mut tried = 0;
                loop {
                    match nodes[(first + tried) % nodes.len()].get_async_pubsub().await {
                        Ok(pubsub) => return Ok(pubsub),
                        Err(e) if tried + 1 >= nodes.len() => return Err(e),
                        Err(_) => {
                            tried += 1;
                            cluster.next.store(first + tried, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// The server, or a cluster's first seed node, as a server of its own.
    pub fn seed(&self) -> &redis::Client {
        match self {
            Self::Single(client) => client,
            Self::Cluster(cluster) => &cluster.nodes[0],
        }
    }

    /// Every node of the deployment, with this client's credentials and TLS: one server, or
    /// each primary and replica of a cluster that can be reached (from `CLUSTER NODES`), for what
    /// must be done on each of them (ACL users are not shared between a cluster's nodes).
    pub async fn nodes(&self) -> anyhow::Result<Vec<redis::Client>> {
        let cluster = match self {
            Self::Single(client) => return Ok(vec![(**client).clone()]),
            Self::Cluster(cluster) => cluster,
        };
        let mut conn =
            self.seed().get_multiplexed_async_connection().await.context("connecting to a seed node")?;
        let listing: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await?;
        reachable_nodes(&listing).map(|(host, port)| node(&cluster.url, host, port)).collect()
    }

    /// A pool of connections; a cluster's is its one multiplexed connection, made on first use.
    pub fn pool(&self, size: usize) -> anyhow::Result<Pool> {
        Ok(match self {
            Self::Single(client) => {
                let manager = Manager::new(client.get_connection_info().clone())?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .max_size(size)
                    .wait_timeout(Some(POOL_TIMEOUT))
                    .create_timeout(Some(POOL_TIMEOUT))
                    .recycle_timeout(Some(POOL_TIMEOUT))
                    .runtime(Runtime::Tokio1)
                    .build()
                    .context("building the redis pool")?;
                Pool::Single(pool)
            }
            Self::Cluster(cluster) => Pool::Cluster(Arc::new((cluster.client.clone(), Default::default()))),
        })
    }
}

/// The client of a cluster's node at `host:port`, reached as `url` says (credentials, TLS).
fn node(url: &url::Url, host: &str, port: u16) -> anyhow::Result<redis::Client> {
    let mut node = url.clone();
    node.set_host(Some(host)).with_context(|| format!("{host}: not a host"))?;
    node.set_port(Some(port)).map_err(|()| anyhow::anyhow!("{host}:{port}: no port in this URL"))?;
    crate::tls::redis(node.as_str())
}

/// The address of each node `CLUSTER NODES` lists, but those without one and those the cluster
/// agrees have failed (nothing can reach them). Each line: `<id> <host>:<port>@<bus
/// port>[,<hostname>] <flags> …`.
fn reachable_nodes(listing: &str) -> impl Iterator<Item = (&str, u16)> {
    listing.lines().filter_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (address, flags) = (fields.next()?, fields.next()?);
        if flags.split(',').any(|flag| flag == "noaddr" || flag == "fail") {
            return None;
        }
        let (host, port) = address.split('@').next()?.rsplit_once(':')?;
        Some((host, port.parse().ok().filter(|&port| port != 0)?))
    })
}

/// Where a process's connections to one Redis come from. It connects lazily: building it never
/// fails because Redis is down.
#[derive(Clone)]
pub enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(Arc<(ClusterClient, tokio::sync::OnceCell<ClusterConnection>)>),
}

impl Pool {
    /// A live connection, detached from the pool (the pool keeps its own handle), to clone
    /// freely; a single server's pool checks it with a PING on the way out.
    pub async fn get(&self) -> Result<Conn, PoolError> {
        match self {
            Self::Single(pool) => Ok(Conn::Single((*pool.get().await?).clone())),
            Self::Cluster(cluster) => {
                let (client, conn) = &**cluster;
                let conn = conn.get_or_try_init(|| client.get_async_connection()).await;
                Ok(Conn::Cluster(conn.map_err(PoolError::Backend)?.clone()))
            }
        }
    }

    /// The pool's state for the `botfleet_pool_*` metrics; a cluster's one connection counts as
    /// one, always available once made.
    pub fn status(&self) -> deadpool_redis::Status {
        match self {
            Self::Single(pool) => pool.status(),
            Self::Cluster(cluster) => {
                let size = usize::from(cluster.1.initialized());
                deadpool_redis::Status { max_size: 1, size, available: size, waiting: 0 }
            }
        }
    }
}

/// One multiplexed connection shared by every request of a process, taken from the pool once
/// and replaced after an error: the pool's checkout costs a PING round trip, too much for
/// work done on every read.
pub struct Shared {
    pool: Pool,
    conn: std::sync::Mutex<Option<Conn>>,
}

impl Shared {
    pub fn new(pool: Pool) -> Self {
        Self { pool, conn: std::sync::Mutex::new(None) }
    }

    pub async fn get(&self) -> Result<Conn, PoolError> {
        if let Some(conn) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(conn);
        }
        let conn = self.pool.get().await?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// After an error on the shared connection: the next `get` takes a fresh one.
    pub fn reset(&self) {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A pool for a Redis URL that connects lazily.
pub fn pool(url: &Secret, size: usize) -> anyhow::Result<Pool> {
    Client::open(url)?.pool(size)
}

/// Refuses to go on with a URL that makes no client, or credentials Redis refuses, with an
/// error naming the setting `key`; a Redis not reachable yet is no error here (pools connect
/// when they can).
pub async fn check_credentials(url: &Secret, key: &str) -> anyhow::Result<()> {
    let client = Client::open(url).with_context(|| format!("setting {key}"))?;
    let seed = client.seed().get_multiplexed_async_connection();
    match tokio::time::timeout(POOL_TIMEOUT, seed).await {
        Ok(Err(e)) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
            anyhow::bail!("setting {key}: Redis refused its user or password ({e})")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(url: &str) -> anyhow::Result<Client> {
        Client::open(&Secret::new(url))
    }

    #[test]
    fn acl_users_go_to_every_node_that_can_be_reached() {
        let listing = "\
a1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:30002@40002,redis-b slave a1 0 1 1 connected
c3 127.0.0.1:30003@40003 master,fail - 1 1 2 disconnected 5461-10922
d4 :0@0 master,noaddr - 1 1 3 disconnected
";
        let nodes: Vec<_> = reachable_nodes(listing).collect();
        assert_eq!(nodes, [("127.0.0.1", 30001), ("127.0.0.1", 30002)]);
    }

    #[test]
    fn a_cluster_url_names_its_seeds_and_bad_ones_are_refused() {
        assert!(matches!(open("redis://127.0.0.1:6379/0"), Ok(Client::Single(_))));
        assert!(matches!(open("redis://127.0.0.1:6379/?cluster=false"), Ok(Client::Single(_))));
        let Ok(Client::Cluster(cluster)) = open("redis://u:p@10.0.0.1:7000/?cluster=true&addr=10.0.0.2:7001")
        else {
            panic!("a cluster URL makes a cluster client");
        };
        let seeds: Vec<String> =
            cluster.nodes.iter().map(|node| node.get_connection_info().addr().to_string()).collect();
        assert_eq!(seeds, ["10.0.0.1:7000", "10.0.0.2:7001"]);
        for (url, error) in [
            ("redis://h:1/?cluster=yes", "cluster=yes: true or false"),
            ("redis://h:1/?cluster=true&addr=h2", "addr=h2: host:port"),
            ("redis://h:1/?cluster=true&addr=h2:port", "addr=h2:port: not a port"),
        ] {
            let refused = open(url).map(drop).unwrap_err().to_string();
            assert_eq!(refused, error, "{url}");
        }
    }
}
