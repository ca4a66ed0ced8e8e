//! The SRE view (grafana/): the shipped Prometheus config and alert rules pass promtool and
//! their unit tests, and on a running cluster after traffic every metric a graph or an alert
//! reads exists, every process's /metrics passes `promtool check metrics`, Prometheus scrapes
//! every process and evaluates every graph's query and every rule without error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::helpers::{eventually, text_update};

fn grafana(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana").join(file)
}

/// Runs promtool (bin/test installs it with Debian's `prometheus`), feeding it `input`.
fn promtool(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(grafana(""))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: bin/test installs it (apt-get install prometheus)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_shipped_config_and_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "config", "prometheus.yml"], "");
    promtool(&["check", "rules", "alerts.yml"], "");
    let tested = promtool(&["test", "rules", "alerts.test.yml"], "");
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test that fires it, and a runbook section.
    let rules = std::fs::read_to_string(grafana("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(grafana("alerts.test.yml")).unwrap();
    let runbooks = std::fs::read_to_string(grafana("README.md")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}\n")), "no unit test fires {alert}");
        assert!(
            runbooks.contains(&format!("### {alert}\n")),
            "no runbook section for {alert} in grafana/README.md"
        );
    }
}

/// Every query of the dashboards, with Grafana's variables filled in as "All" would.
fn dashboard_queries() -> Vec<String> {
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(grafana("dashboards")).unwrap() {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                queries.push(
                    expr.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$bot", ".*"),
                );
            }
        }
    }
    assert!(queries.len() > 40, "the dashboards hold only {} queries", queries.len());
    queries
}

/// The metric names (`botfleet_…`, `process_…`) that `text` mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["botfleet_", "process_"] {
        for (at, _) in text.match_indices(prefix) {
            let preceded =
                text[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !preceded {
                names.insert(name);
            }
        }
    }
    names
}

/// Prometheus's answer to an instant query (its `data`), failing on any error.
async fn prometheus_query(prometheus: &str, query: &str) -> Value {
    let answer: Value = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "success", "Prometheus refused {query}: {answer}");
    answer["data"].clone()
}

#[tokio::test]
async fn every_graph_and_alert_reads_metrics_that_a_running_cluster_exports() {
    let cluster = Cluster::new();
    cluster.run(&["up", "--workers", "2", "--api", "2", "--replicas", "1"]).await;
    let env = cluster.env();
    let client = reqwest::Client::new();
    let deliver = |update: Value| {
        client
            .post(&env["BOTFLEET_WEBHOOK_URL"])
            .header("x-telegram-bot-api-secret-token", &env["BOTFLEET_WEBHOOK_SECRET"])
            .header("content-type", "application/json")
            .body(update.to_string())
            .send()
    };

    // Traffic through Nginx: an open SSE stream, posts by new and returning users, an update
    // of a kind nobody knows yet, feed pages.
    let mut stream = client.get(format!("{}/api/feed/stream", env["BOTFLEET_URL"])).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    for (id, user) in [(1, 501), (2, 502), (3, 501)] {
        let response =
            deliver(text_update(id, user, &format!("post {id} for the dashboards"))).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let unknown = deliver(json!({"update_id": 4, "a_kind_from_the_future": {"id": 1}})).await.unwrap();
    assert_eq!(unknown.status(), 200, "an unknown kind of update is acknowledged and counted");
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !seen.contains("post 1 for the dashboards") {
            seen.push_str(&String::from_utf8_lossy(&stream.chunk().await.unwrap().unwrap()));
        }
    })
    .await
    .expect("the stream must carry the first post");
    for _ in 0..2 {
        let page = client.get(format!("{}/api/feed", env["BOTFLEET_URL"])).send().await.unwrap();
        assert_eq!(page.status(), 200);
    }
    // Telegram reports trouble delivering to the webhook; a worker's watcher exports it.
    let bot_id: i64 = env["BOTFLEET_BOT_TOKEN"].split(':').next().unwrap().parse().unwrap();
    let trouble = json!({"bot_id": bot_id, "pending": 7, "error": [30, "Connection timed out"]});
    let response = client
        .post(format!("{}/__fake/webhook_trouble", env["BOTFLEET_TELEGRAM_URL"]))
        .json(&trouble)
        .send()
        .await;
    assert_eq!(response.unwrap().status(), 204);
    let urls: Vec<&str> = env["BOTFLEET_METRICS_URLS"].split(',').collect();
    let scrape_all = || async {
        let mut texts = Vec::new();
        for url in &urls {
            texts.push(reqwest::get(*url).await.unwrap().text().await.unwrap());
        }
        texts
    };
    // Both come from measurements made every few seconds: wait for the first of each.
    let texts =
        eventually(Duration::from_secs(20), "Telegram's delivery error and the replica lag", || async {
            let texts = scrape_all().await;
            let has = |needle: &str| texts.iter().any(|t| t.contains(needle));
            (has("message=\"Connection timed out\"") && has("botfleet_replica_lag_seconds{")).then_some(texts)
        })
        .await;

    for (url, text) in urls.iter().zip(&texts) {
        let checked = promtool(&["check", "metrics"], text);
        assert!(checked.trim().is_empty(), "promtool check metrics complains about {url}:\n{checked}");
    }
    let exported: BTreeSet<String> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let queries = dashboard_queries();
    let rules = std::fs::read_to_string(grafana("alerts.yml")).unwrap();
    let mut read = metric_names(&queries.join("\n"));
    read.extend(metric_names(&rules));
    let missing: Vec<_> = read.iter().filter(|name| !exported.contains(*name)).collect();
    assert!(missing.is_empty(), "graphs or alerts read metrics no process exports: {missing:?}");

    // Prometheus scrapes every process, and every graph's query and rule evaluates.
    let prometheus = &env["BOTFLEET_PROMETHEUS_URL"];
    assert!(!prometheus.is_empty(), "bin/cluster must start Prometheus when it is installed");
    eventually(Duration::from_secs(20), "Prometheus to scrape every process", || async {
        let up = prometheus_query(prometheus, "sum(up{job=\"botfleet\"})").await;
        let exported = prometheus_query(prometheus, "count(botfleet_posts_created_total)").await;
        let value = |data: &Value| data["result"][0]["value"][1].as_str().map(str::to_owned);
        (value(&up) == Some(urls.len().to_string()) && value(&exported).is_some()).then_some(())
    })
    .await;
    for query in &queries {
        prometheus_query(prometheus, query).await;
    }
    eventually(Duration::from_secs(20), "every alert rule evaluated without error", || async {
        let rules: Value =
            reqwest::get(format!("{prometheus}/api/v1/rules")).await.ok()?.json().await.ok()?;
        let rules = rules["data"]["groups"][0]["rules"].as_array()?.clone();
        let healthy = rules.iter().all(|r| r["health"] == "ok");
        (rules.len() >= 10 && healthy).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_to_one_worker_under_steady_load_loses_and_fails_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    let cluster = Cluster::new();
    cluster.run(&["up", "--workers", "2", "--api", "1", "--replicas", "0"]).await;
    let env = cluster.env();
    let worker_pid =
        std::fs::read_to_string(Path::new(&env["BOTFLEET_PIDS_DIR"]).join("worker-1.pid")).unwrap();
    let worker_pid = worker_pid.trim().to_owned();
    let (answered, stop) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
    let progress = Arc::new(tokio::sync::Notify::new());
    // Steady load through Nginx: 16 lanes, each a chat sending one post after another.
    let lanes: Vec<_> = (0..16i64)
        .map(|lane| {
            let (url, secret) = (env["BOTFLEET_WEBHOOK_URL"].clone(), env["BOTFLEET_WEBHOOK_SECRET"].clone());
            let (answered, stop, progress) = (answered.clone(), stop.clone(), progress.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                for n in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let update =
                        text_update(lane * 100_000 + n + 1, 7000 + lane, &format!("lane {lane} post {n}"));
                    let response = client
                        .post(&url)
                        .header("x-telegram-bot-api-secret-token", &secret)
                        .header("content-type", "application/json")
                        .body(update.to_string())
                        .send()
                        .await;
                    statuses.push(response.map(|r| r.status().as_u16()).map_err(|e| e.to_string()));
                    answered.fetch_add(1, Ordering::SeqCst);
                    progress.notify_waiters();
                }
                statuses
            })
        })
        .collect();
    let answered_at_least = |n: i64| {
        let (answered, progress) = (answered.clone(), progress.clone());
        async move {
            while answered.load(Ordering::SeqCst) < n {
                let notified = progress.notified();
                if answered.load(Ordering::SeqCst) >= n {
                    break;
                }
                notified.await;
            }
        }
    };
    answered_at_least(200).await;
    let killed = Command::new("bash").args(["-c", &format!("kill -TERM {worker_pid}")]).status().unwrap();
    assert!(killed.success());
    // The default grace period is 25 s; the worker drains and exits well within it.
    eventually(Duration::from_secs(25), "the worker to drain and exit", || async {
        (!crate::cluster::alive(&worker_pid)).then_some(())
    })
    .await;
    let after_exit = answered.load(Ordering::SeqCst);
    answered_at_least(after_exit + 200).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = 0;
    for lane in lanes {
        for status in lane.await.unwrap() {
            assert_eq!(status, Ok(200), "every update must be acknowledged, during the drain too");
            sent += 1;
        }
    }
    let primary = crate::helpers::connect(&env["BOTFLEET_PRIMARY_URL"]).await;
    let row = primary.query_one("SELECT count(*), count(DISTINCT update_id) FROM posts", &[]).await.unwrap();
    let (posts, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((posts, distinct), (sent, sent), "one post per acknowledged update, none lost or doubled");
}
