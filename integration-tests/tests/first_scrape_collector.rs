//! Every metric `docs/endpoints.md` documents for the collector is in its first scrape, at zero, but the
//! per-partition and histogram families, which appear with their first partition or batch. Its own
//! test binary: the Prometheus recorder is process-wide.

use logpipe_integration_tests as it;

/// Labelled by partition (and reason), or histograms: no series before a partition or a batch.
const ON_FIRST_USE: [&str; 5] = [
    "collector_consumer_lag",
    "collector_offset_resets_total",
    "collector_batch_commit_seconds",
    "collector_event_age_seconds",
    // A histogram: its lines are `_bucket`, `_sum`, `_count`.
    "collector_storage_maintenance_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collectors_first_scrape_has_every_documented_metric_but_the_per_partition_ones() {
    let name = it::unique("scrape");
    let (collector, _) = it::start_collector(it::collector_config(&name, 2)).await;
    let missing =
        it::missing_documented(&collector.metrics().await, "collector", &ON_FIRST_USE, 10);
    assert!(
        missing.is_empty(),
        "missing from the first scrape: {missing:?}"
    );
    collector.stop().await;
    let pool = it::schema_pool(&name).await;
    it::drop_schema(&pool, &name).await;
}
