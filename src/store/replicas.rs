//! Where feed reads go: the first replica that answers and is current enough, else the primary.
//! All connections use the read-only API role.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::admin::Health;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no database reachable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(tokio_postgres::Error),
}

/// What a replica must have replayed to be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Any database will do: what is read is not cached.
    Any,
    /// The primary's WAL position after the latest publish or removal committed, in bytes.
    Replayed(i64),
    /// Nobody knows what was committed last (Redis lost it): only the primary is current.
    Unknown,
}

pub struct Reader {
    primary: Pool,
    replicas: Vec<Pool>,
    metrics: Arc<Metrics>,
}

impl Reader {
    pub fn new(primary: Pool, replicas: Vec<Pool>, metrics: Arc<Metrics>) -> Self {
        Self { primary, replicas, metrics }
    }

    /// The primary, for what only it is sure to have (not a feed read: not counted as one).
    pub fn primary(&self) -> &Pool {
        &self.primary
    }

    /// Runs a read-only query on the first database that can answer it. A replica that has not
    /// yet replayed what `fresh` asks for lags and is skipped: whatever it answered could be
    /// cached stale (the replica-lag guard). The primary is always current.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        fresh: Freshness,
    ) -> Result<Vec<Row>, ReadError> {
        let replicas = if fresh == Freshness::Unknown { &[][..] } else { &self.replicas[..] };
        let sources = replicas.iter().map(|pool| (pool, "replica")).chain([(&self.primary, "primary")]);
        let mut last_problem = String::new();
        for (pool, source) in sources {
            let client = match pool.get().await {
                Ok(client) => client,
                Err(e) => {
                    last_problem = e.to_string();
                    tracing::warn!(source, error = %e, "database unreachable for a feed read; trying the next");
                    continue;
                }
            };
            let started = std::time::Instant::now();
            let read = async {
                let statement = client.prepare_cached(sql).await?;
                client.query(&statement, params).await
            };
            let result = match (source, fresh) {
                ("replica", Freshness::Replayed(position)) => {
                    // The check and the read go out together (one round trip, the check first);
                    // the rows are used only if the check passes.
                    let (current, result) = tokio::join!(Self::current(&client, position), read);
                    match current {
                        Ok(true) => result,
                        Ok(false) => {
                            self.metrics.replica_lagging.inc();
                            tracing::debug!(position, "replica lags behind the feed; skipping it");
                            continue;
                        }
                        Err(e) => {
                            last_problem = e.to_string();
                            continue;
                        }
                    }
                }
                _ => read.await,
            };
            self.metrics
                .db_query_seconds
                .with_label_values(&["feed_read"])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(rows) => {
                    self.metrics.feed_reads.with_label_values(&[source]).inc();
                    return Ok(rows);
                }
                // A statement error would fail the same way everywhere.
                Err(e) if e.code().is_some() && !e.is_closed() => return Err(ReadError::Query(e)),
                Err(e) => {
                    last_problem = e.to_string();
                    tracing::warn!(source, error = %e, "feed read failed; trying the next database");
                }
            }
        }
        Err(ReadError::Unavailable(last_problem))
    }

    /// Whether the replica behind `client` has replayed the WAL up to `position`.
    async fn current(
        client: &deadpool_postgres::Object,
        position: i64,
    ) -> Result<bool, tokio_postgres::Error> {
        const CHECK: &str =
            "SELECT coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint >= $1, false)";
        let statement = client.prepare_cached(CHECK).await?;
        Ok(client.query_one(&statement, &[&position]).await?.get(0))
    }

    /// Measures every replica's replay lag every `every` until `shutdown`, into the metrics
    /// (`botfleet_replica_lag_seconds`, `botfleet_replica_up`, labelled by replica number).
    pub async fn watch_lag(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: crate::shutdown::CancellationToken,
    ) {
        // Caught up when everything received is replayed; else the age of the last replayed commit.
        const LAG: &str =
            "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8
                                ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END";
        loop {
            for (n, pool) in self.replicas.iter().enumerate() {
                let label = (n + 1).to_string();
                let lag = match pool.get().await {
                    Ok(client) => {
                        client.query_one(LAG, &[]).await.ok().and_then(|row| row.get::<_, Option<f64>>(0))
                    }
                    Err(_) => None,
                };
                self.metrics.replica_up.with_label_values(&[&label]).set(i64::from(lag.is_some()));
                if let Some(lag) = lag {
                    self.metrics.replica_lag_seconds.with_label_values(&[&label]).set(lag);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Ok when every database answers; degraded when some do not but reads can still be
    /// served; unreachable when none answers.
    pub async fn health(&self) -> Health {
        let (primary, replicas) = tokio::join!(
            super::pool::ping(&self.primary),
            futures_util::future::join_all(self.replicas.iter().map(super::pool::ping))
        );
        let replicas_up = replicas.iter().filter(|up| **up).count();
        match (primary, replicas_up) {
            (true, n) if n == self.replicas.len() => Health::Ok,
            (false, 0) => Health::Unreachable,
            _ => Health::Degraded,
        }
    }
}
