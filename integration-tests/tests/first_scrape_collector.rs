//! Every metric `docs/endpoints.md` documents for the collector is in its first scrape, at zero, but the
//! per-partition and histogram families, which appear with their first partition or batch. Its own
//! test binary: the Prometheus recorder is process-wide.

use logpipe_integration_tests as it;

/// Labelled by partition (and reason), or histograms: no series before a partition or a batch.
const ON_FIRST_USE: [&str; 6] = [
    "collector_consumer_lag",
    "collector_offset_resets_total",
    "collector_batch_commit_seconds",
    "collector_batch_events",
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

/// A histogram's `_sum` or `_count` value in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_histograms_appear_with_the_first_batch_and_count_every_stored_row() {
    let name = it::unique("scrape-batches");
    let config = it::collector_config(&name, 2);
    let kafka = config.kafka.clone();
    let (collector, _) = it::start_collector(config).await;
    let pool = it::schema_pool(&name).await;
    let events = it::profile_events(
        logpipe_generator::events::Profile::Steady,
        7,
        chrono::Utc::now() - chrono::Duration::minutes(1),
        std::time::Duration::from_secs(30),
        300,
    );
    it::produce_events(&it::producer(&kafka), &kafka.raw_topic, &events).await;
    it::wait_rows(&pool, 300).await;
    let scrape = collector.metrics().await;
    let batches = sample(&scrape, "collector_batch_events_count").expect("batch count");
    let rows = sample(&scrape, "collector_batch_events_sum").expect("batch sum");
    let commits = sample(&scrape, "collector_batch_commit_seconds_count").expect("commit count");
    // One sample per committed batch in each; their sizes add up to the rows stored (the recorder
    // is process-wide, and this binary's other test stores nothing).
    assert!(batches >= 1.0, "{scrape}");
    assert_eq!(batches, commits, "{scrape}");
    assert_eq!(rows, 300.0, "{scrape}");
    collector.stop().await;
    it::drop_schema(&pool, &name).await;
}
