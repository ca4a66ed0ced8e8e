//! Where feed reads go: the first replica that answers, else the primary. All connections use
//! the read-only API role. (Lag-aware routing and health checks come with the feed-cache work.)

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

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

    /// Runs a read-only query on the first database that can answer it.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, ReadError> {
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

    /// Whether at least one database (replica or primary) answers.
    pub async fn any_reachable(&self) -> bool {
        for pool in self.replicas.iter().chain([&self.primary]) {
            if db::ping(pool).await {
                return true;
            }
        }
        false
    }
}
