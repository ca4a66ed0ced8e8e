//! `bin/cluster`: up (twice), one post end to end through Nginx, then down leaving nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{eventually, text_update, unique};

/// A cluster of `bin/cluster`, in a folder of its own.
pub struct Cluster {
    pub dir: PathBuf,
}

impl Cluster {
    pub fn new() -> Self {
        Self { dir: std::env::temp_dir().join(unique("cluster")) }
    }

    /// `bin/cluster ARGS`; `up` with `--tls` in bin/test's TLS mode, with `--redis-cluster 3`
    /// in its cluster mode.
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bin/cluster");
        let mode = match (args.first(), std::env::var("BOTFLEET_TEST_MODE").as_deref()) {
            (Some(&"up"), Ok("tls")) => &["--tls"][..],
            (Some(&"up"), Ok("cluster")) => &["--redis-cluster", "3"],
            _ => &[],
        };
        let output = tokio::process::Command::new(script)
            .args(args)
            .args(mode)
            .env("BOTFLEET_BIN", env!("CARGO_BIN_EXE_botfleet"))
            .env("BOTFLEET_CLUSTER_DIR", &self.dir)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "bin/cluster {args:?} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    pub fn env(&self) -> HashMap<String, String> {
        let text =
            std::fs::read_to_string(self.dir.join("cluster.env")).expect("cluster.env must exist after up");
        botfleet::settings::parse_env_file(&text).unwrap()
    }
}

/// A test that fails half way still stops its cluster.
impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.join("cluster.env").exists() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bin/cluster");
            let _ = std::process::Command::new(script)
                .arg("down")
                .env("BOTFLEET_CLUSTER_DIR", &self.dir)
                .output();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !matches!(stat.split(' ').nth(2), Some("Z" | "X")))
        .unwrap_or(false)
}

#[tokio::test]
async fn cluster_up_twice_serves_a_post_end_to_end_then_down_is_clean() {
    let cluster = Cluster::new();
    cluster.run(&["up", "--workers", "2", "--api", "2", "--replicas", "1"]).await;
    let env = cluster.env();
    for key in [
        "BOTFLEET_URL",
        "BOTFLEET_WEBHOOK_URL",
        "BOTFLEET_WEBHOOK_SECRET",
        "BOTFLEET_BOT_TOKEN",
        "BOTFLEET_TELEGRAM_URL",
        "BOTFLEET_PRIMARY_URL",
        "BOTFLEET_REPLICA_URLS",
        "BOTFLEET_REDIS_URL",
        "BOTFLEET_METRICS_URLS",
        "BOTFLEET_PIDS_DIR",
        "BOTFLEET_PROMETHEUS_URL",
    ] {
        assert!(env.get(key).is_some_and(|v| !v.is_empty()), "cluster.env lacks {key}");
    }
    let second = cluster.run(&["up"]).await;
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already up"),
        "a second up must leave the running cluster alone"
    );
    assert_eq!(cluster.env(), env, "a second up must not change the cluster");

    // One post end to end: through Nginx to a worker, into the primary, out of the replica.
    let client = reqwest::Client::new();
    let response = client
        .post(&env["BOTFLEET_WEBHOOK_URL"])
        .header("x-telegram-bot-api-secret-token", &env["BOTFLEET_WEBHOOK_SECRET"])
        .header("content-type", "application/json")
        .body(text_update(1, 4242, "hello through the whole cluster").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let feed_url = format!("{}/api/feed", env["BOTFLEET_URL"]);
    eventually(Duration::from_secs(1), "the post on the feed through nginx", || async {
        let feed: Value = reqwest::get(&feed_url).await.ok()?.json().await.ok()?;
        (feed["posts"][0]["text"] == json!("hello through the whole cluster")).then_some(())
    })
    .await;
    let calls: Value =
        reqwest::get(format!("{}/__fake/calls?method=sendMessage", env["BOTFLEET_TELEGRAM_URL"]))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(calls[0]["params"]["chat_id"], json!(4242), "the reply must be in the call log: {calls}");
    // The same update twice at once through Nginx, landing on two worker processes: one post.
    let deliver = || {
        client
            .post(&env["BOTFLEET_WEBHOOK_URL"])
            .header("x-telegram-bot-api-secret-token", &env["BOTFLEET_WEBHOOK_SECRET"])
            .header("content-type", "application/json")
            .body(text_update(2, 4343, "one update, delivered twice at once").to_string())
            .send()
    };
    let (a, b) = tokio::join!(deliver(), deliver());
    assert_eq!((a.unwrap().status().as_u16(), b.unwrap().status().as_u16()), (200, 200));
    let primary = crate::helpers::connect(&env["BOTFLEET_PRIMARY_URL"]).await;
    let posts: i64 =
        primary.query_one("SELECT count(*) FROM posts WHERE update_id = 2", &[]).await.unwrap().get(0);
    assert_eq!(posts, 1, "a duplicate delivery through the cluster must make one post");
    // Once the replica has replayed the posts, a page nobody asked for yet is read from it.
    let replica = crate::helpers::connect(env["BOTFLEET_REPLICA_URLS"].split(',').next().unwrap()).await;
    eventually(Duration::from_secs(5), "the replica to replay the posts", || async {
        let n: i64 = replica.query_one("SELECT count(*) FROM posts", &[]).await.ok()?.get(0);
        (n == 2).then_some(())
    })
    .await;
    let page: Value = reqwest::get(format!("{}/api/feed?limit=7", env["BOTFLEET_URL"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["posts"].as_array().unwrap().len(), 2);
    let mut replica_reads = 0;
    for url in env["BOTFLEET_METRICS_URLS"].split(',') {
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        assert!(!text.contains(&env["BOTFLEET_BOT_TOKEN"]), "the token leaked into {url}");
        replica_reads += text
            .lines()
            .filter(|l| l.starts_with("botfleet_feed_reads_total{source=\"replica\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    assert!(replica_reads >= 1, "the feed must have been read from the replica");

    let pids_dir = PathBuf::from(&env["BOTFLEET_PIDS_DIR"]);
    let pids: Vec<(String, String)> = std::fs::read_dir(&pids_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap().trim().to_owned(),
            )
        })
        .collect();
    assert!(pids.len() >= 9, "expected a pid file per process, got {pids:?}");
    assert!(pids.iter().all(|(_, pid)| alive(pid)), "every process must run: {pids:?}");

    let nginx_conf = std::fs::read_to_string(cluster.dir.join("nginx/nginx.conf")).unwrap();
    let feed_cache =
        nginx_conf.split("proxy_cache_path ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap();
    assert!(Path::new(feed_cache).is_dir(), "nginx's feed cache at {feed_cache}");

    cluster.run(&["down"]).await;
    assert!(!Path::new(feed_cache).exists(), "nginx's feed cache left after down: {feed_cache}");
    let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(pid)).collect();
    assert!(left.is_empty(), "processes left after down: {left:?}");
    let front = env["BOTFLEET_URL"].trim_start_matches("http://").to_owned();
    assert!(tokio::net::TcpStream::connect(&front).await.is_err(), "nginx's port still accepts after down");
    assert!(!cluster.dir.join("cluster.env").exists());
}
