//! A pause after a 429, kept in Redis so that every process of the cluster waits it out: the
//! bot's (the worker's replies and outbox through [`super::flood`], callback answers, and the
//! media proxy's `getFile` wait it), and the media proxy's own, which only `getFile` waits.

use std::time::Duration;

use crate::kv::Conn;

/// How long the bot's calls stay paused after a 429 that any process of the cluster met
/// (`pause_key`: `BotKeys::flood_pause`), if they are.
pub async fn paused(conn: &mut Conn, pause_key: &str) -> redis::RedisResult<Option<Duration>> {
    let ms: i64 = redis::cmd("PTTL").arg(pause_key).query_async(conn).await?;
    Ok((ms > 0).then(|| Duration::from_millis(ms.unsigned_abs())))
}

/// Pauses every process's calls under `pause_key` for `after` (never shortening a longer pause).
pub async fn pause(conn: &mut Conn, pause_key: &str, after: Duration) -> redis::RedisResult<()> {
    let ms = after.as_millis().max(1) as u64;
    tracing::warn!(
        retry_after_ms = ms,
        pause = pause_key,
        "Telegram answered 429: pausing these calls in every process"
    );
    redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(pause_key)
        .arg(1)
        .arg("PX")
        .arg(ms)
        .arg("NX")
        .ignore()
        .cmd("PEXPIRE")
        .arg(pause_key)
        .arg(ms)
        .arg("GT")
        .ignore()
        .query_async(conn)
        .await
}
