//! The chaos harness's own tests: its checkers catch nodes run in a deliberately unsafe
//! mode — acknowledging writes before they are committed, checking credentials without
//! a lease, or applying control-plane changes without their audit events. (The short chaos run itself is part of `scripts/test.sh`, through
//! `scripts/chaos/run.sh`.)

use std::process::Command;

use serde_json::Value;

/// One chaos run at a time: two clusters competing for the cores would change the timing
/// each schedule is meant to produce.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `conifer-chaos` with `args` into a fresh directory; returns its exit code and summary.
fn chaos(args: &[&str]) -> (Option<i32>, Value, String) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_conifer-chaos"))
        .args(args)
        .arg("--out")
        .arg(out.path())
        .env("CONIFER_BIN", conifer_tests::conifer_bin())
        .output()
        .expect("run conifer-chaos");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = std::fs::read_to_string(out.path().join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    (output.status.code(), summary, log)
}

#[test]
fn checkers_catch_a_node_that_acknowledges_writes_before_commit() {
    let (code, summary, log) = chaos(&[
        "--unsafe",
        "ack-before-commit",
        "--schedules",
        "1",
        "--nodes",
        "3",
        "--duration-s",
        "12",
        "--seed",
        "7",
    ]);
    assert_eq!(code, Some(1), "expected violations (exit 1):\n{log}");
    let lost = summary["lost_acknowledged_writes"].as_u64().unwrap_or(0);
    let nonlinear = summary["linearizability_violations"].as_u64().unwrap_or(0);
    assert!(
        lost + nonlinear > 0,
        "the unsafe mode went unnoticed: {summary}\n{log}"
    );
    assert!(
        summary["acknowledged_writes"].as_u64().unwrap_or(0) > 0,
        "no write was acknowledged: {summary}"
    );
}

#[test]
fn checkers_catch_a_node_that_checks_credentials_without_a_lease() {
    // Long partitions only: keys revoked on the majority side must be refused on the
    // cut-off side within the bound, which only the lease guarantees.
    let (code, summary, log) = chaos(&[
        "--unsafe",
        "no-lease",
        "--faults",
        "partition-split",
        "--hold-ms",
        "5000-8000",
        "--schedules",
        "2",
        "--nodes",
        "3",
        "--duration-s",
        "16",
        "--seed",
        "13",
    ]);
    assert_eq!(code, Some(1), "expected violations (exit 1):\n{log}");
    let accepted = summary["revoked_credential_accepts_past_bound"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        accepted > 0,
        "a revoked key accepted past the bound went unnoticed: {summary}\n{log}"
    );
    assert!(
        summary["max_accepted_delay_ms"].as_f64().unwrap_or(0.0)
            > summary["revocation_bound_ms"].as_f64().unwrap_or(f64::MAX),
        "{summary}"
    );
}

#[test]
fn the_audit_checker_catches_changes_applied_without_their_events() {
    let (code, summary, log) = chaos(&[
        "--unsafe",
        "drop-audit-events",
        "--schedules",
        "1",
        "--nodes",
        "3",
        "--duration-s",
        "10",
        "--seed",
        "17",
    ]);
    assert_eq!(code, Some(1), "expected violations (exit 1):\n{log}");
    let mismatches = summary["audit_mismatches"].as_u64().unwrap_or(0);
    assert!(
        mismatches > 0,
        "actions without their audit events went unnoticed: {summary}\n{log}"
    );
    let missing = summary["reports"][0]["audit"]["missing"]
        .as_array()
        .map_or(0, Vec::len);
    assert!(missing > 0, "{summary}");
}

/// Writes sent to the majority side while the shard's leader is cut off: forwarded to the
/// old leader until its peer channel's keepalive notices the cut, then to the new one.
/// Runs the same schedule safe and unsafe, so the checker is seen both to pass and to fail.
fn isolate_shard_leader(
    unsafe_mode: Option<&str>,
    schedules: &str,
) -> (Option<i32>, Value, String) {
    let mut args = vec![
        "--faults",
        "isolate-shard-leader",
        "--hold-ms",
        "6000-8000",
        "--schedules",
        schedules,
        "--nodes",
        "3",
        "--duration-s",
        "14",
        "--seed",
        "23",
    ];
    if let Some(mode) = unsafe_mode {
        args.extend(["--unsafe", mode]);
    }
    chaos(&args)
}

#[test]
fn writes_fail_over_while_the_shard_leader_is_cut_off() {
    let (code, summary, log) = isolate_shard_leader(None, "1");
    assert_eq!(code, Some(0), "expected a clean run:\n{log}");
    let writes = summary["failover_writes"].as_u64().unwrap_or(0);
    assert!(
        writes > 0,
        "no write was sent during an isolation: {summary}"
    );
    assert_eq!(summary["failover_unanswered"], 0, "{summary}");
    let applied: u64 = summary["reports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["failover"]["applied"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        applied > 0,
        "no write went through the new leader while the old one was cut off: {summary}"
    );
}

#[test]
fn the_failover_checker_catches_peers_that_never_notice_a_cut() {
    // Only the writes in flight when a cut begins hang (about one per majority client and
    // isolation; the client moves on after its timeout, by when a new leader is known):
    // two schedules of two isolations each, so that some are sure to be.
    let (code, summary, log) = isolate_shard_leader(Some("no-failover"), "2");
    assert_eq!(code, Some(1), "expected violations (exit 1):\n{log}");
    assert!(
        summary["failover_unanswered"].as_u64().unwrap_or(0) > 0,
        "writes left hanging went unnoticed: {summary}\n{log}"
    );
}
