//! The short chaos run: eight faults (a worker SIGKILLed, Redis SIGKILLed, Redis restarted empty,
//! the primary SIGKILLed, the primary SIGKILLed and its synchronous replica promoted, a worker
//! stopped past its leases then continued, updates that panic in the handler, a Redis Cluster's
//! master SIGKILLed and its replica promoted), each on a fresh
//! cluster under 30 s of replayed load with SSE subscribers, each followed by the exactly-once
//! audit (lost, duplicated, out of order) and the SSE gap check (`loadtest/chaos --short`;
//! `loadtest/chaos` runs all fourteen and records them).

use std::path::Path;

use crate::helpers::unique;

#[tokio::test]
async fn eight_faults_under_load_lose_duplicate_reorder_and_miss_nothing() {
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
    let faults = [
        "kill-worker",
        "kill-redis",
        "wipe-redis",
        "kill-primary",
        "failover",
        "stall-worker",
        "panic-update",
        "kill-redis-master",
    ];
    for fault in faults {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {fault} |")))
            .unwrap_or_else(|| panic!("no row for {fault}:\n{report}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | fault | sent | acknowledged | lost | duplicated | in doubt | out of order | dead-lettered
        // | missed | time to recover | redeliveries |
        let [sent, acknowledged, lost, duplicated, in_doubt, out_of_order, dead, missed, _, redeliveries] =
            [2, 3, 4, 5, 6, 7, 8, 9, 10, 11].map(|c| cells[c]);
        assert_eq!(
            (sent, lost, duplicated, out_of_order, missed),
            (acknowledged, "0", "0", "0", "0"),
            "{fault}: {row}"
        );
        // A copy in doubt needs a sender that died (or stalled) right after Telegram took the
        // first copy, and the redelivery of its update: never more than were redelivered
        // (src/replay/audit.rs), and never without such a fault.
        let in_doubt: u64 = in_doubt.parse().unwrap();
        let allowed =
            if fault == "kill-worker" || fault == "stall-worker" { redeliveries.parse().unwrap() } else { 0 };
        assert!(in_doubt <= allowed, "{fault}: {in_doubt} in doubt, at most {allowed}: {row}");
        // Only the panicking updates are dead-lettered, and they were in the mix.
        let dead: u64 = dead.parse().unwrap();
        assert_eq!(dead > 0, fault == "panic-update", "{fault}: {dead} dead-lettered: {row}");
    }
}
