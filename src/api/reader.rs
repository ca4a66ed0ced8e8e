//! Where feed reads go: the first replica that answers and is current enough, else the primary.
//! All connections use the read-only API role.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::admin::Health;
use crate::db;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no database reachable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(tokio_postgres::Error),
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

    /// Runs a read-only query on the first database that can answer it. With `newest`, a
    /// replica that has not yet replayed that post lags and is skipped: whatever it would answer
    /// could be cached stale (the replica-lag guard). The primary is always current.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        newest: Option<i64>,
    ) -> Result<Vec<Row>, ReadError> {
        let sources = self.replicas.iter().map(|pool| (pool, "replica")).chain([(&self.primary, "primary")]);
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
            if let (Some(newest), "replica") = (newest, source) {
                match client.query_opt("SELECT 1 FROM posts WHERE id = $1", &[&newest]).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        self.metrics.replica_lagging.inc();
                        tracing::debug!(newest, "replica lags behind the newest post; skipping it");
                        continue;
                    }
                    Err(e) => {
                        last_problem = e.to_string();
                        continue;
                    }
                }
            }
            let result = match client.prepare_cached(sql).await {
                Ok(statement) => client.query(&statement, params).await,
                Err(e) => Err(e),
            };
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
            db::ping(&self.primary),
            futures_util::future::join_all(self.replicas.iter().map(db::ping))
        );
        let replicas_up = replicas.iter().filter(|up| **up).count();
        match (primary, replicas_up) {
            (true, n) if n == self.replicas.len() => Health::Ok,
            (false, 0) => Health::Unreachable,
            _ => Health::Degraded,
        }
    }
}
