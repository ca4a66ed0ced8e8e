//! Redis users per role, as Postgres has roles (`botfleet redis-acl`): each process connects as
//! a user limited to the commands, keys and channels its role needs.
//!
//! - `botfleet-worker`: every key and channel of the deployment; no dangerous or admin command
//!   (`KEYS`, `FLUSHALL`, `CONFIG`, `DEBUG`, …) but `INFO`.
//! - `botfleet-api`: reads every key of the deployment, writes only the feed's versions and WAL
//!   position (which `feed_state.lua` moves on, or drops, when Redis lost them: a script must be
//!   allowed to write every key it is given), the page cache and the media proxy's keys; listens
//!   on the feed's channel only; cannot `PUBLISH`, `XADD` or `SETBIT` at all — it cannot inject a post,
//!   queue a message or mark an update handled.
//! - `botfleet-webhook`: reads and writes the webhook secrets' fingerprints, nothing else.
//!
//! The rules are applied with `ACL SETUSER <user> reset …` (so applying twice changes nothing) on
//! the state Redis and the cache Redis, then saved with `ACL SAVE` where Redis has an ACL file.
//! Passwords go to Redis as SHA-256 hashes only.

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::settings::{RedisAclSettings, Secret};

pub const WORKER: &str = "botfleet-worker";
pub const API: &str = "botfleet-api";
pub const WEBHOOK: &str = "botfleet-webhook";

/// Every role's rules for the deployment whose keys start with `prefix` (a glob may cover many).
pub fn rules(prefix: &str) -> [(&'static str, Vec<String>); 3] {
    let p = prefix;
    let commands = ["+@all", "-@dangerous", "-@admin", "+info"].map(str::to_owned);
    let worker = commands.iter().cloned().chain([format!("~{p}:*"), format!("&{p}:*")]).collect();
    let api = commands
        .iter()
        .cloned()
        .chain(["-publish", "-spublish", "-xadd", "-setbit"].map(str::to_owned))
        .chain([
            format!("%R~{p}:*"),
            format!("~{p}:{{feed}}:gen"),
            format!("~{p}:{{feed}}:removals"),
            format!("~{p}:{{feed}}:lsn"),
            format!("~{p}:feed:page:*"),
            format!("~{p}:*:media:*"),
            format!("&{p}:feed:live"),
        ])
        .collect();
    let webhook = ["-@all", "+@connection", "+get", "+set", "+cluster|slots"]
        .map(str::to_owned)
        .into_iter()
        .chain([format!("~{p}:*:webhook:secret-sha256")])
        .collect();
    [(WORKER, worker), (API, api), (WEBHOOK, webhook)]
}

/// `ACL SETUSER` arguments for `user`: enabled, this password only, exactly these rules.
fn setuser(user: &str, password: &Secret, rules: &[String]) -> Vec<String> {
    let hash: String = Sha256::digest(password.expose()).iter().map(|b| format!("{b:02x}")).collect();
    let head = [user.to_owned(), "reset".into(), "on".into(), format!("#{hash}")];
    head.into_iter().chain(rules.iter().cloned()).collect()
}

/// Applies every role's user on each Redis of the settings; returns what to print.
pub async fn apply(settings: &RedisAclSettings) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut nodes = Vec::new();
    for url in settings.redis_urls() {
        nodes.extend(super::client::Client::open(url)?.nodes().await?);
    }
    for client in nodes {
        let mut conn = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
        let where_ = client.get_connection_info().addr().to_string();
        for ((user, rules), password) in rules(&settings.prefix).iter().zip(&settings.passwords) {
            let args = setuser(user, password, rules);
            let () = redis::cmd("ACL").arg("SETUSER").arg(&args).query_async(&mut conn).await.with_context(
                || format!("ACL SETUSER {user} on {where_} (the URL's user must be allowed ACL)"),
            )?;
            lines.push(format!("{where_}: ACL SETUSER {}", args.join(" ").replace(&args[3], "#<sha256>")));
        }
        let saved: redis::RedisResult<()> = redis::cmd("ACL").arg("SAVE").query_async(&mut conn).await;
        lines.push(match saved {
            Ok(()) => format!("{where_}: saved to its ACL file"),
            Err(_) => format!("{where_}: not saved (no ACL file): apply again after each restart"),
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_reads_everything_and_writes_only_caches_and_versions() {
        let [(worker, w), (api, a), (webhook, h)] = rules("bf");
        assert_eq!((worker, api, webhook), (WORKER, API, WEBHOOK));
        assert!(w.contains(&"~bf:*".to_owned()) && w.contains(&"&bf:*".to_owned()));
        assert!(a.contains(&"%R~bf:*".to_owned()) && !a.contains(&"~bf:*".to_owned()));
        assert!(a.iter().any(|r| r == "-publish") && a.contains(&"&bf:feed:live".to_owned()));
        assert_eq!(h.last().unwrap(), "~bf:*:webhook:secret-sha256");
        for rules in [&w, &a] {
            assert!(rules.contains(&"-@dangerous".to_owned()), "no KEYS, FLUSHALL, CONFIG");
        }
    }

    #[test]
    fn passwords_go_as_hashes() {
        let args = setuser(WORKER, &Secret::new("s3cret"), &["+ping".to_owned()]);
        assert_eq!(&args[..3], [WORKER, "reset", "on"]);
        assert_eq!(args[3].len(), 65);
        assert!(args[3].starts_with('#') && !args.iter().any(|a| a.contains("s3cret")));
    }
}
