//! `botfleet migrate`: applies the embedded schema migrations and the least-privilege roles on
//! the primary (see `store::migrations`), then says what it did.

use crate::settings::MigrateSettings;
use crate::store::migrations;

/// Applies what is missing; returns the line to print.
pub async fn run(settings: &MigrateSettings) -> anyhow::Result<String> {
    let applied = migrations::apply(settings).await?;
    Ok(format!(
        "migrations applied: {applied:?}; roles {} and {} granted",
        settings.worker_role, settings.api_role
    ))
}
