//! Redis, one server or a Redis Cluster: clients, pools, key names and scripts. Keys of a
//! deployment all start with its prefix (`BOTFLEET_REDIS_PREFIX`), then the bot's id (in a hash
//! tag or not, see [`BotKeys`]), so deployments and bots never collide.

pub mod acl;
mod client;
mod keys;

use std::time::Duration;

pub use client::{Client, Cluster, Conn, Pool, PoolError, Shared, check_credentials, pool};
pub use keys::{BotKeys, FeedKeys, turns_channel};

/// Whether Redis answers PING.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok(),
        Err(_) => false,
    }
}

/// How often [`watch_memory`] samples a Redis.
const MEMORY_EVERY: Duration = Duration::from_secs(15);

/// Samples a Redis's memory (`INFO memory`) into `botfleet_redis_memory_bytes{redis=name}` now
/// and every 15 s until `stop`: the alert on the state Redis nearing its maxmemory reads it. Of
/// a Redis Cluster, the fullest master's (the one that refuses writes first).
pub async fn watch_memory(
    name: &'static str,
    pool: Pool,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    stop: crate::shutdown::CancellationToken,
) {
    loop {
        if let Ok(mut conn) = pool.get().await
            && let Ok(info) = redis::cmd("INFO").arg("memory").query_async::<redis::Value>(&mut conn).await
            && let Some((used, max)) = fullest(&info)
        {
            metrics.redis_memory.with_label_values(&[name, "used"]).set(used);
            metrics.redis_memory.with_label_values(&[name, "max"]).set(max);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(MEMORY_EVERY) => {}
        }
    }
}

/// Used and maximum memory of the fullest server in `INFO memory`'s answer: one server's text,
/// or a cluster client's map of each master's.
fn fullest(info: &redis::Value) -> Option<(i64, i64)> {
    let texts: Vec<String> = match info {
        redis::Value::Map(nodes) => {
            nodes.iter().filter_map(|(_, text)| redis::from_redis_value_ref(text).ok()).collect()
        }
        text => vec![redis::from_redis_value_ref(text).ok()?],
    };
    let fill = |&(used, max): &(i64, i64)| if max > 0 { used as f64 / max as f64 } else { 0.0 };
    texts
        .iter()
        .filter_map(|text| Some((info_field(text, "used_memory")?, info_field(text, "maxmemory")?)))
        .max_by(|a, b| fill(a).total_cmp(&fill(b)).then(a.0.cmp(&b.0)))
}

/// A number from `INFO`'s `field:value` lines.
fn info_field(info: &str, field: &str) -> Option<i64> {
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
}

/// Takes or keeps the lease `key` for `me` (a role one process of the cluster plays at a time);
/// whether `me` holds it now.
pub async fn hold_lease(conn: &mut Conn, key: &str, me: &str, lease: Duration) -> redis::RedisResult<bool> {
    let ms = lease.as_millis() as u64;
    let taken: Option<String> =
        redis::cmd("SET").arg(key).arg(me).arg("NX").arg("PX").arg(ms).query_async(conn).await?;
    if taken.is_some() {
        return Ok(true);
    }
    let renewed: i64 = scripts::LEASE_RENEW.key(key).arg(me).arg(ms).invoke_async(conn).await?;
    Ok(renewed == 1)
}

/// The Lua scripts, loaded once. `Script::invoke_async` runs EVALSHA and loads the script
/// again if Redis has forgotten it (after a restart or `SCRIPT FLUSH`).
pub mod scripts {
    use std::sync::LazyLock;

    use redis::Script;

    macro_rules! script {
        ($name:ident, $file:literal) => {
            pub static $name: LazyLock<Script> =
                LazyLock::new(|| Script::new(include_str!(concat!("../../lua/", $file))));
        };
    }

    script!(INTAKE_BEGIN, "intake_begin.lua");
    script!(INTAKE_END, "intake_end.lua");
    script!(LEASE_RENEW, "lease_renew.lua");
    script!(DIALOGUE_SAVE, "dialogue_save.lua");
    script!(PUBLISH_POST, "publish_post.lua");
    script!(FEED_REMOVED, "feed_removed.lua");
    script!(FEED_STATE, "feed_state.lua");
    script!(FLOOD_TAKE, "flood_take.lua");
    script!(OUTBOX_ADD, "outbox_add.lua");
    script!(BROADCAST_QUEUE, "broadcast_queue.lua");
    script!(BROADCAST_PARK, "broadcast_park.lua");
    script!(BROADCAST_RESUME, "broadcast_resume.lua");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fullest_master_of_a_cluster_is_the_one_watched() {
        let info = |used: u64, max: u64| redis::Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: format!("# Memory\r\nused_memory:{used}\r\nmaxmemory:{max}\r\n"),
        };
        assert_eq!(fullest(&info(10, 100)), Some((10, 100)), "one server");
        let masters = redis::Value::Map(vec![
            (redis::Value::SimpleString("a:1".into()), info(50, 1000)),
            (redis::Value::SimpleString("b:2".into()), info(90, 100)),
            (redis::Value::SimpleString("c:3".into()), info(70, 1000)),
        ]);
        assert_eq!(fullest(&masters), Some((90, 100)));
        assert_eq!(fullest(&redis::Value::Nil), None);
    }

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:0\r\n";
        assert_eq!(super::info_field(info, "used_memory"), Some(1_048_576));
        assert_eq!(super::info_field(info, "maxmemory"), Some(0));
        assert_eq!(super::info_field(info, "used_memory_peak"), None);
    }
}
