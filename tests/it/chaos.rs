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
        // | fault | sent | acknowledged | lost | duplicated | in doubt | missed | time to recover | redeliveries |
        let [sent, acknowledged, lost, duplicated, in_doubt, missed, _, redeliveries] =
            [2, 3, 4, 5, 6, 7, 8, 9].map(|c| cells[c]);
        assert_eq!((sent, lost, duplicated, missed), (acknowledged, "0", "0", "0"), "{fault}: {row}");
        // A copy in doubt needs a sender that died right after Telegram took the first copy, and
        // the redelivery of its update: only a killed worker can leave one, never more than
        // were redelivered (src/replay/audit.rs).
        let in_doubt: u64 = in_doubt.parse().unwrap();
        let allowed = if fault == "kill-worker" { redeliveries.parse().unwrap() } else { 0 };
        assert!(in_doubt <= allowed, "{fault}: {in_doubt} in doubt, at most {allowed}: {row}");
    }
}
