//! One statement at a time on the primary, and what its failure means for the caller.

use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (pool timeout, connection refused or closed).
    #[error("postgres unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl StoreError {
    /// The same kind of error, for one more caller (a failed batch answers each of its posts).
    pub fn for_another(&self) -> Self {
        match self {
            StoreError::Unavailable(e) => StoreError::Unavailable(anyhow::anyhow!("{e:#}")),
            StoreError::Other(e) => StoreError::Other(anyhow::anyhow!("{e:#}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.into())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // No SQLSTATE means the failure was the connection, not the statement; so do a
        // connection exception (class 08) and an operator's intervention (57P: the server shuts
        // down, or ended this session, as a failover or an administrator does).
        let code = e.code().map(|code| code.code());
        let unreachable = code.is_none_or(|code| code.starts_with("08") || code.starts_with("57P"));
        if e.is_closed() || unreachable {
            StoreError::Unavailable(e.into())
        } else {
            StoreError::Other(e.into())
        }
    }
}

/// The primary's WAL position now, in bytes. The insert position, not the write position: with
/// asynchronous commit the commit record may not be written out yet when the commit returns.
pub(super) const WAL_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";

/// Runs one statement, committed on its own, and reads the WAL position after its commit on the
/// same connection, pipelined: one round trip for both.
pub(super) async fn query_committed(
    db: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(Vec<Row>, i64), StoreError> {
    let client = db.get().await?;
    let (statement, position) =
        tokio::try_join!(client.prepare_cached(sql), client.prepare_cached(WAL_POSITION))?;
    // Sent in this order, each ending its own implicit transaction: the position is read after
    // the statement committed.
    let (rows, position) =
        tokio::try_join!(client.query(&statement, params), client.query_one(&position, &[]))?;
    Ok((rows, position.get(0)))
}

/// Runs one prepared (and cached) statement.
pub(super) async fn query(
    db: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let client = db.get().await?;
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}
