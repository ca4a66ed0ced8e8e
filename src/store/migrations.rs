//! Versioned migrations, embedded in the binary, and the least-privilege roles.
//!
//! `apply` is safe to run twice and safe when several processes run it at once: everything
//! happens under one advisory lock, each migration in its own transaction together with the
//! row that records it. Roles are created if missing and their grants re-applied every time,
//! so a new table never stays unreachable (or too reachable).

use anyhow::Context;
use tokio_postgres::Client;

use crate::settings::MigrateSettings;

/// Arbitrary, fixed key of the advisory lock that serialises migrations of one database.
const MIGRATION_LOCK: i64 = 0x626f_7466_6c65_6574; // "botfleet"

/// The schema's history, oldest first. Never edit a released entry: add a new one.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("migrations/0001_init.sql") },
    Migration { version: 2, name: "post_message", sql: include_str!("migrations/0002_post_message.sql") },
    Migration {
        version: 3,
        name: "user_unreachable",
        sql: include_str!("migrations/0003_user_unreachable.sql"),
    },
    Migration { version: 4, name: "broadcasts", sql: include_str!("migrations/0004_broadcasts.sql") },
    Migration { version: 5, name: "decided_update", sql: include_str!("migrations/0005_decided_update.sql") },
    Migration { version: 6, name: "origins", sql: include_str!("migrations/0006_origins.sql") },
    Migration { version: 7, name: "outbox_journal", sql: include_str!("migrations/0007_outbox_journal.sql") },
    Migration { version: 8, name: "cursor_key", sql: include_str!("migrations/0008_cursor_key.sql") },
    Migration {
        version: 9,
        name: "paid_broadcasts",
        sql: include_str!("migrations/0009_paid_broadcasts.sql"),
    },
];

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Tables the worker role may write.
const WORKER_TABLES: &str = "users, posts, dead_letters, broadcasts, notices, broadcast_deliveries";
/// Tables the API role may read (and nothing else).
const API_TABLES: &str = "users, posts, api_keys";

/// Applies what is missing and re-applies the roles' grants. Returns the versions it applied.
pub async fn apply(settings: &MigrateSettings) -> anyhow::Result<Vec<i32>> {
    let mut client = super::pool::connect(settings.database_url.expose())
        .await
        .context("connecting to the primary as the schema owner")?;
    apply_locked(&mut client, settings).await
}

async fn apply_locked(client: &mut Client, settings: &MigrateSettings) -> anyhow::Result<Vec<i32>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let result = apply_migrations(client).await;
    let result = match result {
        Ok(applied) => ensure_roles(client, settings).await.map(|()| applied),
        Err(e) => Err(e),
    };
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("releasing the migration lock")?;
    result
}

async fn apply_migrations(client: &mut Client) -> anyhow::Result<Vec<i32>> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS botfleet_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .context("creating botfleet_migrations")?;
    let done: Vec<i32> = client
        .query("SELECT version FROM botfleet_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql)
            .await
            .with_context(|| format!("applying migration {} ({})", migration.version, migration.name))?;
        tx.execute(
            "INSERT INTO botfleet_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version = migration.version, name = migration.name, "applied migration");
        applied.push(migration.version);
    }
    Ok(applied)
}

/// Creates the two roles if missing and (re)grants exactly what each may do. Role names were
/// validated as plain identifiers by the settings, so they are safe to splice into SQL.
async fn ensure_roles(client: &Client, settings: &MigrateSettings) -> anyhow::Result<()> {
    let (worker, api) = (&settings.worker_role, &settings.api_role);
    for role in [worker, api] {
        // Roles are shared by every database of the server, so another database's migration
        // may create the same role at the same moment: either error means it exists.
        client
            .batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {role} LOGIN;
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
            ))
            .await
            .with_context(|| format!("creating role {role}"))?;
    }
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
                 EXECUTE format('GRANT CONNECT ON DATABASE %I TO {worker}, {api}', current_database());
             END $$;
             GRANT USAGE ON SCHEMA public TO {worker}, {api};
             GRANT SELECT, INSERT, UPDATE, DELETE ON {WORKER_TABLES} TO {worker};
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {worker};
             REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {api};
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {api};
             GRANT SELECT ON {API_TABLES} TO {api};
             ALTER ROLE {api} SET default_transaction_read_only = on;"
        ))
        .await
        .context("granting the roles' privileges")?;
    Ok(())
}
