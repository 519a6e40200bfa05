use clap::Parser;
use logpipe_generator::{config::Cli, Application};

// Every event is built from small strings and a map, serialized and dropped: glibc's malloc and
// free were about a fifth of the generator's CPU in a 40,000/s load test's profile (issue 32), as
// they were in the collector's; mimalloc costs less. With the workspace's `override` feature it
// also serves C's malloc, so librdkafka's per-record allocations leave glibc too (BENCHMARKS.md;
// `tests/allocator.rs` keeps it so).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Cli::parse().into_config()?;
    let _tracing =
        logpipe_common::telemetry::init_tracing_for("logpipe-generator", &config.tracing);
    tracing::info!(config = %config.summary(), "starting generator");
    let app = Application::build(config).await?;
    app.run_until_stopped(logpipe_common::shutdown::shutdown_token())
        .await?;
    Ok(())
}
