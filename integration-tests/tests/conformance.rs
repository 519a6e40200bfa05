//! The broker conformance cases logpipe relies on with no workaround, against the test broker
//! (`logpipe-broker-conformance` prints every case as a table).

use logpipe_integration_tests::conformance::run;

async fn passes(case: &str) {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_logpipe-broker-conformance"));
    let o = run(case, &logpipe_integration_tests::brokers(), exe).await;
    assert!(o.pass, "{case}: {}", o.detail);
}

#[tokio::test]
async fn idempotent_produces_are_stored_once_at_contiguous_offsets() {
    passes("idempotent_produce").await;
}

#[tokio::test]
async fn a_sigkilled_members_partitions_go_to_the_survivor_within_the_session_timeout() {
    passes("member_killed").await;
}

#[tokio::test]
async fn a_fetch_from_inside_a_record_batch_returns_that_batch_from_the_offset() {
    passes("fetch_inside_a_batch").await;
}

#[tokio::test]
async fn cooperative_sticky_members_share_partitions_and_the_survivor_takes_all() {
    passes("cooperative_sticky").await;
}
