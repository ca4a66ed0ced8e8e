//! What is never retried forever nor dropped silently: an update that kept failing, and an
//! authenticated body that cannot be handled as what it is (no update at all, or a known kind
//! the parser could not read), each kept whole in `dead_letters`, acknowledged, counted
//! (`botfleet_dead_letters_total`, which `BotfleetDeadLetters` alerts on) and reported.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use super::answer::Answer;
use super::state::{BotRuntime, WorkerState};
use crate::kv::Conn;
use crate::store::posts;
use crate::telegram::redact;
use crate::telemetry;
use crate::types::UpdateId;

/// Whether a failed attempt still needs its error report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    Now,
    /// Reported already (a panic, by the panic hook).
    Done,
}

/// Counts a failed attempt at `update_id`; after `BOTFLEET_MAX_ATTEMPTS`, keeps the update as a
/// dead letter. Returns whether the update is done with (dead-lettered); an error is Redis' or
/// Postgres', and the attempt then does not count.
pub async fn failed(
    state: &WorkerState,
    redis: &mut Conn,
    bot: &BotRuntime,
    update_id: UpdateId,
    raw: &[u8],
    error: &str,
    report: Report,
) -> Result<bool, String> {
    let attempts = bot.intake.count_failure(redis, update_id).await.map_err(|e| e.to_string())?;
    if attempts < state.max_attempts {
        // One error report per failed delivery; the reports of one update group together.
        if report == Report::Now {
            telemetry::report_error(&format!("update failed: {}", redact(error, &bot.client.config.token)));
        }
        return Ok(false);
    }
    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
    keep(state, bot, update_id, raw, error, attempts).await?;
    Ok(true)
}

/// Keeps an authenticated body that cannot be handled as what it is; acknowledged once stored,
/// retried (503) while the database cannot store it.
pub async fn unreadable(state: &WorkerState, bot: &BotRuntime, raw: &[u8], why: &str) -> Answer {
    state.metrics.updates_unparseable.with_label_values(&[bot.client.config.name.as_str()]).inc();
    match keep(state, bot, key_of(raw), raw, why, 1).await {
        Ok(()) => Answer::Acknowledged,
        Err(e) => {
            tracing::warn!(bot = %bot.client.config.name, error = %e, "could not keep an unreadable update");
            Answer::RetryLater
        }
    }
}

async fn keep(
    state: &WorkerState,
    bot: &BotRuntime,
    update_id: UpdateId,
    raw: &[u8],
    error: &str,
    attempts: i32,
) -> Result<(), String> {
    let config = &bot.client.config;
    posts::dead_letter(&state.services.db, config.id, update_id, &payload(raw), error, attempts)
        .await
        .map_err(|e| e.to_string())?;
    state.metrics.dead_letters.with_label_values(&[config.name.as_str()]).inc();
    let report = redact(error, &config.token);
    telemetry::report_error(&format!("update dead-lettered: {report}"));
    tracing::error!(bot = %config.name, update_id = update_id.0, attempts, error = %report, "update dead-lettered");
    Ok(())
}

/// The body as stored: its text, or `base64:` and its bytes where it is no text Postgres can
/// keep (invalid UTF-8, or a NUL).
fn payload(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(text) if !text.contains('\0') => Cow::Borrowed(text),
        _ => Cow::Owned(format!("base64:{}", STANDARD.encode(raw))),
    }
}

/// What a dead letter is kept under, so that a redelivery finds the same row: the body's
/// `update_id`, or for a body without one a key made from its bytes (negative, so never a
/// Telegram update id).
fn key_of(raw: &[u8]) -> UpdateId {
    let update_id = serde_json::from_slice::<serde_json::Value>(raw)
        .ok()
        .and_then(|body| body.get("update_id")?.as_i64())
        .filter(|id| *id >= 0);
    update_id.map_or_else(
        || {
            let digest = Sha256::digest(raw);
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            UpdateId(-1 - (u64::from_be_bytes(first) >> 1) as i64)
        },
        UpdateId,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_body_under_its_update_id_or_a_stable_negative_key() {
        assert_eq!(key_of(br#"{"update_id": 42, "message": {}}"#), UpdateId(42));
        let garbage = key_of(b"not json");
        assert!(garbage.0 < 0, "{garbage:?}");
        assert_eq!(garbage, key_of(b"not json"), "a redelivery finds the same row");
        assert_ne!(garbage, key_of(b"not json either"));
        assert!(key_of(br#"{"update_id": -1}"#).0 < 0 && key_of(br#"{"update_id": "7"}"#).0 < 0);
        assert_eq!(payload(b"{\"a\": 1}"), "{\"a\": 1}");
        assert_eq!(payload(b"\0"), "base64:AA==");
        assert_eq!(payload(&[b'{', 0xff]), "base64:e/8=");
    }
}
