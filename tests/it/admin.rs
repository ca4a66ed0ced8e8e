//! The admin port: /healthz, /readyz (failing while draining) and /metrics.

use crate::helpers::{
    MAIN_BOT, TestDb, deliver_update, spawn_fake, spawn_worker, spawn_worker_with, text_update, unique,
};

#[tokio::test]
async fn admin_port_reports_health_readiness_and_metrics_then_drains() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    let worker = spawn_worker(&db, &unique("r"), &telegram, &[MAIN_BOT]).await;
    assert_eq!(reqwest::get(worker.admin_url("/healthz")).await.unwrap().status(), 200);
    let ready = reqwest::get(worker.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().await.unwrap(), "postgres: ok\nredis: ok\n");

    deliver_update(&worker, &MAIN_BOT, &text_update(1, 42, "metrics should count me")).await;
    let metrics = reqwest::get(worker.admin_url("/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        "botfleet_build_info{process=\"worker\"",
        "botfleet_webhook_requests_total{bot=\"main\",status=\"200\"} 1",
        "botfleet_posts_created_total{bot=\"main\"} 1",
        "botfleet_bot_api_calls_total{method=\"sendMessage\",result=\"ok\"} 1",
        "botfleet_update_handling_seconds_count{kind=\"message\"} 1",
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line:?}:\n{metrics}");
    }
    assert!(!metrics.contains(MAIN_BOT.token), "the token leaked into /metrics");

    let url = worker.url("/webhook/main");
    worker.stop.cancel();
    worker.handle.await.unwrap().expect("the worker must drain and stop cleanly");
    assert!(reqwest::get(url).await.is_err(), "a stopped worker must not accept");
}

#[tokio::test]
async fn readyz_fails_when_redis_is_unreachable() {
    let db = TestDb::fresh().await;
    let (_fake, telegram) = spawn_fake(false).await;
    // A port nothing listens on: bind one, then drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let redis_url = format!("redis://127.0.0.1:{port}");
    let extra = [("BOTFLEET_REDIS_URL", redis_url.as_str())];
    let worker = spawn_worker_with(&db, &unique("r"), &telegram, &[MAIN_BOT], &extra).await;
    let ready = reqwest::get(worker.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.text().await.unwrap(), "postgres: ok\nredis: unreachable\n");
}
