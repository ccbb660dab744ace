//! The abuse scenarios at short scale, one test each, every one against its own 3-node
//! cluster (the full run with its report is `scripts/abuse/run.sh`).

use conifer_tests::abuse::{self, Scale};

/// One scenario at a time: each measures latencies and memory that another running beside
/// it on these cores would distort.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs scenario `name` and fails with its figures when a check did not hold.
async fn scenario(name: &str) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut cluster = abuse::start(name).await.expect("cluster");
    let outcome = abuse::run(&mut cluster, name, Scale::Short)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    println!("{name}: {}", outcome.figures);
    assert!(
        outcome.passed,
        "{name} failed: {:?}\nfigures: {}",
        outcome.failures, outcome.figures
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_source_cannot_take_every_connection_and_slowloris_is_closed() {
    scenario("connections").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_attempts_count_before_checking_and_another_accounts_success_resets_nothing() {
    scenario("sign_in_throttle").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn password_hashing_is_bounded_work_and_memory_stays_flat() {
    scenario("password_hashing").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_hold_on_the_merged_result_of_updates() {
    scenario("merged_limits").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_project_record_total_holds_across_indexes_and_nodes() {
    scenario("project_totals").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_bounded() {
    scenario("bounded_responses").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_flood_keeps_every_change_event_and_the_chain_verifies() {
    scenario("audit_flood").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_keys_cost_the_leader_a_bounded_number_of_read_indexes() {
    scenario("garbage_keys").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_unary_grpc_call_with_two_messages_is_refused() {
    scenario("unary_frames").await;
}
