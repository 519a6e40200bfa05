//! Every metric `docs/endpoints.md` documents for the generator is in its first scrape, at zero. Its own
//! test binary: the Prometheus recorder is process-wide, so another service in the same process
//! would register names for it.

use logpipe_integration_tests as it;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generators_first_scrape_has_every_documented_metric() {
    let generator = it::start_generator(it::generator_config(&it::unique("scrape"), 2)).await;
    let missing = it::missing_documented(&generator.metrics().await, "generator", &[], 8);
    assert!(
        missing.is_empty(),
        "missing from the first scrape: {missing:?}"
    );
    generator.stop().await;
}
