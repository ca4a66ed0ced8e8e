//! The short chaos run: four faults (the API nodes' pub/sub connections killed, an API node and
//! a worker SIGKILLed, Redis restarted), each on a fresh cluster under 30 s of replayed load
//! with SSE subscribers, each followed by the exactly-once audit and the SSE gap check
//! (`loadtest/chaos --short`; `loadtest/chaos` runs all eight and records them).

use std::path::Path;

use crate::helpers::unique;

#[tokio::test]
async fn four_faults_under_load_lose_duplicate_and_miss_nothing() {
    let dir = std::env::temp_dir().join(unique("chaos"));
    let output = tokio::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("loadtest/chaos"))
        .arg("--short")
        .env("BOTFLEET_BIN", env!("CARGO_BIN_EXE_botfleet"))
        .env("BOTFLEET_CLUSTER_DIR", &dir)
        .env("LOADTEST_PROFILE", "debug")
        .output()
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let report = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadtest/chaos --short failed:\n{report}");
    for fault in ["kill-pubsub", "kill-api", "kill-worker", "restart-redis"] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {fault} |")))
            .unwrap_or_else(|| panic!("no row for {fault}:\n{report}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | fault | sent | acknowledged | lost | duplicated | missed | time to recover | redeliveries |
        assert_eq!((cells[2], cells[4], cells[5], cells[6]), (cells[3], "0", "0", "0"), "{fault}: {row}");
    }
}
